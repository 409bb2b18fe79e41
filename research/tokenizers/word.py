"""The word tokenizer: one id per frequent word, [UNK] for every other word."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

import numpy as np

from research.tokenizers.base import NUM_SPECIAL, SPECIAL_TOKENS, UNK_ID, Tokenizer

# A word is a run of Unicode letters, digits and underscores (\w), or any one other
# non-space character (punctuation, symbols, emoji): "don't!" -> don ' t !.
# Whitespace separates words and is dropped.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """The words of text under WORD_PATTERN, in order."""
    return WORD_PATTERN.findall(text)


class WordTokenizer(Tokenizer):
    """The words seen at least min_frequency times, most frequent first, after the specials.

    Lossy: any other word encodes as [UNK], and decoding joins tokens with single spaces,
    so "Hi, there!" comes back as "Hi , there !". Case is kept ("The" and "the" differ).
    """

    type_name = "word"
    min_vocab_size = NUM_SPECIAL + 1
    vocab_floor = "7 special tokens + 1 word"

    def __init__(self, words: Sequence[str]):
        words = tuple(words)
        for w in words:
            if not isinstance(w, str) or split_words(w) != [w]:
                raise ValueError(f"a word tokenizer's vocabulary holds single words (see WORD_PATTERN), got {w!r}")
        if len(set(words)) != len(words):
            raise ValueError("a word tokenizer's vocabulary lists a word twice")
        self._words = words
        self._word_to_id = {w: NUM_SPECIAL + i for i, w in enumerate(words)}
        self.vocab_size = NUM_SPECIAL + len(words)

    def _encode(self, text: str) -> np.ndarray:
        return np.array([self._word_to_id.get(w, UNK_ID) for w in split_words(text)], np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        return " ".join(self.id_to_token(i) for i in ids.tolist())

    def id_to_token(self, token_id: int) -> str:
        token_id = self._check_id(token_id)
        return SPECIAL_TOKENS[token_id] if token_id < NUM_SPECIAL else self._words[token_id - NUM_SPECIAL]

    def token_to_id(self, token: str) -> int | None:
        if token in SPECIAL_TOKENS:  # no word can be a special: WORD_PATTERN splits off the brackets
            return SPECIAL_TOKENS.index(token)
        return self._word_to_id.get(token)

    def _fields(self) -> dict:
        return {"words": list(self._words)}

    @classmethod
    def _from_fields(cls, fields: dict) -> WordTokenizer:
        return cls(fields["words"])

    @classmethod
    def _train(cls, corpus: list[str], vocab_size: int, min_frequency: int) -> WordTokenizer:
        counts = collections.Counter()
        for text in corpus:
            counts.update(split_words(text))
        if not counts:
            raise ValueError("the training corpus holds no words, only whitespace")
        kept = [w for w, n in counts.items() if n >= min_frequency]
        if not kept:
            ((top, top_count),) = counts.most_common(1)
            raise ValueError(
                f"no word occurs min_frequency={min_frequency} times in the training corpus "
                f"(the most frequent, {top!r}, occurs {top_count} times)"
            )
        kept.sort(key=lambda w: (-counts[w], w))  # the word itself breaks ties: deterministic
        return cls(kept[: vocab_size - NUM_SPECIAL])
