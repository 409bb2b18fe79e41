"""Your own text files as a data source: JSONL and plain text, local or any etils path (gs://...).

`data.train_files` / `data.eval_files` are comma-separated globs ending in `.jsonl`
or `.txt`; set both and the run reads them instead of the TFDS dataset
`data.name`, through the same grain pipeline (tokenize -> pack -> batch -> shard,
checkpointable). A `.jsonl` line is one document, its text under `data.text_key`;
a `.txt` file is one document. Files are taken in sorted path order, so every
process and every rerun sees the same records.

The source is random access, as grain wants: opening it indexes every JSONL line
(its byte offset) and checks it parses and holds the text field, so a bad line
is an error naming the file and line before anything compiles; a record is read
from its offset on demand, and only the index stays in memory.
"""

from __future__ import annotations

import glob as globlib
import json

from etils import epath

SUFFIXES = (".jsonl", ".txt")


def check_patterns(patterns: str, field: str) -> list[str]:
    """'a/*.jsonl,b/x.txt' -> its globs; a glob not ending in .jsonl or .txt is an error naming `field`."""
    parts = [p.strip() for p in patterns.split(",") if p.strip()]
    for part in parts:
        if not part.endswith(SUFFIXES):
            raise ValueError(
                f"{field}={patterns!r}: {part!r} must end in one of {SUFFIXES} (JSONL lines or text files)"
            )
    return parts


def expand(patterns: str, field: str) -> list[epath.Path]:
    """Every file the globs match, sorted and deduplicated; a glob matching nothing is an error naming it."""
    paths = set()
    for pattern in check_patterns(patterns, field):
        found = _glob(pattern)
        if not found:
            raise ValueError(f"{field}: {pattern!r} matches no file")
        paths.update(found)
    return sorted(paths, key=str)


def _glob(pattern: str) -> list[epath.Path]:
    """epath's glob (gs:// included) from the last directory before the first wildcard."""
    if not globlib.has_magic(pattern):
        path = epath.Path(pattern)
        return [path] if path.is_file() else []
    parts = pattern.split("/")
    first = next(i for i, p in enumerate(parts) if globlib.has_magic(p))
    root = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
    return [p for p in epath.Path(root).glob("/".join(parts[first:])) if p.is_file()]


class FileSource:
    """Random-access records {text_key: text} over JSONL lines and text files (grain's RandomAccessDataSource)."""

    def __init__(self, patterns: str, text_key: str, field: str):
        self.text_key = text_key
        self.paths = expand(patterns, field)
        self._index: list[tuple[int, int, int]] = []  # (path number, byte offset, line number; -1: whole file)
        for number, path in enumerate(self.paths):
            if path.suffix == ".txt":
                self._index.append((number, 0, -1))
                continue
            offset = 0
            with path.open("rb") as f:
                for line_number, line in enumerate(f, start=1):
                    if line.strip():
                        self._text(_parse(line, path, line_number), path, line_number)
                        self._index.append((number, offset, line_number))
                    offset += len(line)
        if not self._index:
            raise ValueError(f"{field}={patterns!r}: the files hold no record (every JSONL line is empty)")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:
        number, offset, line_number = self._index[i]
        path = self.paths[number]
        if line_number == -1:
            return {self.text_key: path.read_text()}
        with path.open("rb") as f:
            f.seek(offset)
            return {self.text_key: self._text(_parse(f.readline(), path, line_number), path, line_number)}

    def __repr__(self) -> str:
        return f"FileSource({len(self.paths)} files, {len(self)} records)"

    def _text(self, record, path, line_number: int) -> str:
        if not isinstance(record, dict) or not isinstance(record.get(self.text_key), str):
            raise ValueError(
                f"{path}:{line_number}: no text field {self.text_key!r} (data.text_key) in this JSONL line"
            )
        return record[self.text_key]


def _parse(line: bytes, path, line_number: int):
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}:{line_number}: not a JSON line ({e})") from None
