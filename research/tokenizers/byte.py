"""The byte tokenizer: UTF-8 bytes, no vocabulary to learn, any text from step one."""

from __future__ import annotations

import numpy as np

from research.tokenizers.base import NUM_SPECIAL, SPECIAL_TOKENS, Tokenizer, byte_token, parse_byte_token, utf8_bytes


class ByteTokenizer(Tokenizer):
    """Byte b -> id b + 7, after the 7 shared special ids: 263 ids.

    Lossless on any str (decode(encode(x)) == x) and never [UNK]. Raw bytes are taken as
    they are, valid UTF-8 or not: that is how the data pipeline hands it TFDS records.
    """

    type_name = "byte"
    byte_offset = NUM_SPECIAL
    vocab_size = NUM_SPECIAL + 256
    min_vocab_size = vocab_size
    vocab_floor = "7 special tokens + 256 byte tokens"

    def encode(self, text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """int32 ids [len]; a str is UTF-8 encoded, bytes are taken as they are."""
        if isinstance(text, bytes | bytearray | memoryview):
            data = bytes(text)
        elif isinstance(text, str):
            data = utf8_bytes(text)
        else:
            raise TypeError(f"text must be a str or bytes, got {type(text).__name__}")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + self.byte_offset
        return self._with_bos_eos(ids, add_bos, add_eos)

    def _decode(self, ids: np.ndarray) -> str:
        # errors="replace": model samples can stop mid-character or emit any byte sequence,
        # and turning them into text must never raise.
        return ids_to_bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str:
        token_id = self._check_id(token_id)
        return SPECIAL_TOKENS[token_id] if token_id < NUM_SPECIAL else byte_token(token_id - NUM_SPECIAL)

    def token_to_id(self, token: str) -> int | None:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        value = parse_byte_token(token)
        return None if value is None else value + NUM_SPECIAL

    @classmethod
    def _from_fields(cls, fields: dict) -> ByteTokenizer:
        return cls()

    @classmethod
    def _train(cls, corpus: list[str], vocab_size: int, min_frequency: int) -> ByteTokenizer:
        return cls()  # nothing to learn; `train` has already checked the corpus and vocab_size


def ids_to_bytes(ids: np.ndarray) -> bytes:
    """The bytes behind special (0-6, written as their names) and byte (7-262) ids."""
    if not (ids < NUM_SPECIAL).any():
        return (ids - NUM_SPECIAL).astype(np.uint8).tobytes()  # the common case, without a Python loop
    return b"".join(SPECIAL_TOKENS[i].encode() if i < NUM_SPECIAL else bytes([i - NUM_SPECIAL]) for i in ids.tolist())
