"""Tokenizers: text <-> int32 ids, saved into the workdir as a one-line JSON file.

Only a byte-level tokenizer exists so far: it needs no training and no vocabulary
file, so any text can be modelled from step one. Later tokenizers (BPE, ...) join
under the same interface: `encode`, `decode`, `pad_id`/`bos_id`/`eos_id`,
`vocab_size`, `save`, and a "type" entry in the JSON file that `load_tokenizer`
dispatches on.
"""

from __future__ import annotations

import json
import os

import numpy as np

_FILE_VERSION = 1


class ByteTokenizer:
    """UTF-8 bytes shifted past three special ids: PAD=0, BOS=1, EOS=2, byte b -> b + 3.

    PAD is 0 so that a zero-filled array is all padding, which the packer relies on.
    """

    type_name = "byte"
    pad_id = 0
    bos_id = 1
    eos_id = 2
    num_special = 3
    vocab_size = num_special + 256  # 259

    def encode(self, text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Returns int32 ids [len]; str is UTF-8 encoded, bytes are taken as they are."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + self.num_special
        if add_bos or add_eos:
            head = [self.bos_id] if add_bos else []
            tail = [self.eos_id] if add_eos else []
            ids = np.concatenate([np.array(head, np.int32), ids, np.array(tail, np.int32)])
        return ids

    def decode(self, ids) -> str:
        """Drops special ids and decodes the bytes.

        errors="replace": model samples can stop mid-character or emit any byte
        sequence, and turning them into text must never raise.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the byte vocabulary [0, {self.vocab_size})")
        data = (ids[ids >= self.num_special] - self.num_special).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            f.write(json.dumps({"type": self.type_name, "version": _FILE_VERSION}) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ByteTokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"tokenizer file {path} holds a {type(tokenizer).__name__}, not a {cls.__name__}")
        return tokenizer

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


# The JSON file's "type" -> tokenizer class. New tokenizers register here.
_TOKENIZERS = {ByteTokenizer.type_name: ByteTokenizer}


def load_tokenizer(path: str | os.PathLike):
    """Builds the tokenizer that a file written by `save` describes."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"tokenizer file {path} is corrupt: expected a JSON object with a 'type', got {spec!r}")
    if spec["type"] not in _TOKENIZERS:
        raise ValueError(f"tokenizer file {path} has type {spec['type']!r}; known types: {sorted(_TOKENIZERS)}")
    if spec.get("version") != _FILE_VERSION:
        raise ValueError(f"tokenizer file {path} has version {spec.get('version')!r}; this code reads {_FILE_VERSION}")
    return _TOKENIZERS[spec["type"]]()
