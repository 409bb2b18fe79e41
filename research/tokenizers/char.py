"""The character tokenizer: the corpus's most frequent characters, bytes for the rest."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from research.tokenizers.base import NUM_SPECIAL, SPECIAL_TOKENS, Tokenizer, byte_token, parse_byte_token

FIRST_BYTE_ID = NUM_SPECIAL  # ids 7..262: the 256 bytes
FIRST_CHAR_ID = NUM_SPECIAL + 256  # ids 263..: the learned characters


class CharTokenizer(Tokenizer):
    """One id per known character; any other character becomes the ids of its UTF-8 bytes.

    ids 0-6 are the specials, 7-262 the 256 bytes (tokens <0x00>..<0xFF>, SentencePiece's
    byte_fallback), 263 onwards the learned characters, most frequent first. Because
    every character can fall back to bytes, decode(encode(x)) == x for any text and
    [UNK] never occurs; a rare character costs 1-4 ids instead of one.
    """

    type_name = "char"
    min_vocab_size = FIRST_CHAR_ID
    vocab_floor = "7 special tokens + 256 fallback bytes"

    def __init__(self, chars: Sequence[str]):
        chars = tuple(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a character tokenizer's vocabulary holds single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("a character tokenizer's vocabulary lists a character twice")
        self._chars = chars
        self._char_to_id = {c: FIRST_CHAR_ID + i for i, c in enumerate(chars)}
        self.vocab_size = FIRST_CHAR_ID + len(chars)

    def _encode(self, text: str) -> np.ndarray:
        ids = []
        for c in text:
            token_id = self._char_to_id.get(c)
            if token_id is None:
                ids.extend(b + FIRST_BYTE_ID for b in c.encode("utf-8"))
            else:
                ids.append(token_id)
        return np.array(ids, np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        pieces = []
        for i in ids.tolist():
            if i >= FIRST_CHAR_ID:
                pieces.append(self._chars[i - FIRST_CHAR_ID].encode("utf-8"))
            elif i >= FIRST_BYTE_ID:
                pieces.append(bytes([i - FIRST_BYTE_ID]))
            else:
                pieces.append(SPECIAL_TOKENS[i].encode())
        # Bytes, then one decode: a character split into fallback bytes comes back whole, and
        # a broken byte sequence (a model sample) becomes U+FFFD instead of an error.
        return b"".join(pieces).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str:
        token_id = self._check_id(token_id)
        if token_id >= FIRST_CHAR_ID:
            return self._chars[token_id - FIRST_CHAR_ID]
        return byte_token(token_id - FIRST_BYTE_ID) if token_id >= FIRST_BYTE_ID else SPECIAL_TOKENS[token_id]

    def token_to_id(self, token: str) -> int | None:
        if token in self._char_to_id:
            return self._char_to_id[token]
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        value = parse_byte_token(token)
        return None if value is None else FIRST_BYTE_ID + value

    def _fields(self) -> dict:
        return {"chars": list(self._chars)}

    @classmethod
    def _from_fields(cls, fields: dict) -> CharTokenizer:
        return cls(fields["chars"])

    @classmethod
    def _train(cls, corpus: list[str], vocab_size: int, min_frequency: int) -> CharTokenizer:
        counts = collections.Counter()
        for text in corpus:
            counts.update(text)
        kept = [c for c, n in counts.items() if n >= min_frequency]
        kept.sort(key=lambda c: (-counts[c], c))  # the character itself breaks ties: deterministic
        return cls(kept[: vocab_size - FIRST_CHAR_ID])
