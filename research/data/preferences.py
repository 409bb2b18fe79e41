"""Preference pairs as data: (prompt, chosen, rejected) triples and their JSONL files.

Preference tuning (DPO, reward modelling) learns from pairs of continuations of
one prompt, one of them preferred. A file holds one JSON object per line with
string fields "prompt", "chosen" and "rejected" (other fields are ignored, so a
file may carry metadata such as rewards); blank lines are skipped:

    {"prompt": "mov dax", "chosen": "lorp fen", "rejected": "gax tuv"}

How a prompt and a continuation join into one text is the producer's
convention (research.data.sentiment documents its own); this module only
stores the strings. The prompt may be empty (unconditional generation); the
chosen and rejected texts may not, and may not be identical, since such a pair
teaches nothing. Reading checks all of that and reports bad input as a
ValueError naming the file and the 1-based line, so a broken file fails before
training starts rather than part way through. Paths go through etils.epath, so
gs:// and other remote paths work the same way as local ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

from etils import epath

FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A prompt and two continuations of it; `chosen` is the preferred one."""

    prompt: str
    chosen: str
    rejected: str


def pair_problem(fields: dict) -> str | None:
    """What is wrong with a pair given as {"prompt", "chosen", "rejected"}, or None if nothing."""
    for name in FIELDS:
        if name not in fields:
            return f"missing field {name!r}"
        if not isinstance(fields[name], str):
            return f"field {name!r} must be a string, got {type(fields[name]).__name__}"
    for name in ("chosen", "rejected"):
        if not fields[name].strip():
            return f"field {name!r} is empty"
    if fields["chosen"] == fields["rejected"]:
        return "chosen and rejected are identical"
    return None


def read_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """The pairs of a JSONL file, in file order; bad input is a ValueError naming the file and line."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"preference pairs file {path} does not exist")
    pairs = []
    # Split on "\n" only: str.splitlines() would also split at U+2028 and friends,
    # which json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        pairs.append(_parse_line(line, f"{path}:{lineno}"))
    if not pairs:
        raise ValueError(f"{path}: holds no preference pairs")
    return pairs


def _parse_line(line: str, where: str) -> PreferencePair:
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: expected a JSON object with {list(FIELDS)}, got {type(fields).__name__}")
    problem = pair_problem(fields)
    if problem:
        raise ValueError(f"{where}: {problem}")
    return PreferencePair(*(fields[name] for name in FIELDS))


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> None:
    """Writes pairs as JSONL (read_pairs reads them back equal); refuses what read_pairs would reject."""
    path = epath.Path(path)
    lines = []
    for i, pair in enumerate(pairs):
        fields = dataclasses.asdict(pair)
        problem = pair_problem(fields)
        if problem:
            raise ValueError(f"pairs[{i}] cannot be written to {path}: {problem}")
        lines.append(json.dumps(fields, ensure_ascii=False) + "\n")
    if not lines:
        raise ValueError(f"no preference pairs to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
