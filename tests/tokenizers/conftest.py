"""Small training corpora and one trained tokenizer of every kind, shared by the tokenizer tests.

Training all six on ~60 KB takes well under a second (Unigram is the slowest), so the
session trains each once and tests that need a fresh training (determinism) do their own.
"""

import colorsys
import inspect
import json.decoder
import string
import textwrap

import pytest

from research.tokenizers import TOKENIZER_KINDS, train_tokenizer

# Ordinary English with enough repetition for min_frequency=2. It avoids the Spanish words
# of the teddy-bear test (este, oso, de, peluche, es, muuuu) except "adorable".
ENGLISH = [
    "The little dog sat by the window and watched the rain fall on the garden.",
    "Every morning the little dog waited by the door for the children to come home.",
    "The children thought the dog was adorable, and the dog thought the children were adorable too.",
    "A teddy bear sat on the shelf next to the window, and the children loved the bear.",
    "When the rain stopped, the children went out to the garden with the dog and the bear.",
    "They played in the garden until the sun went down and the sky turned red.",
    "Then they came home, ate dinner with their parents, and read a book before bed.",
    "The book was about a bear who lived in a forest and loved to eat honey.",
    "Every night the parents read the book again, and every night the children fell asleep.",
    "The next morning the sun was out, the garden was green, and the dog was waiting by the door.",
]

# Python source: code-like text with punctuation, indentation and identifiers.
CODE = [inspect.getsource(module) for module in (textwrap, json.decoder, colorsys, string)]

CORPUS = ENGLISH * 3 + CODE

# Small but roomy: each kind learns a real vocabulary from CORPUS.
VOCAB_SIZES = {"byte": 263, "char": 330, "word": 400, "bpe": 700, "wordpiece": 700, "unigram": 500}

# A character that appears in none of the corpora above.
UNSEEN_CHAR = "\u02ac"  # ʬ, a phonetic letter


@pytest.fixture(scope="session")
def trained():
    """kind -> a tokenizer of that kind trained on CORPUS."""
    assert UNSEEN_CHAR not in "".join(CORPUS)
    return {kind: train_tokenizer(kind, CORPUS, vocab_size=VOCAB_SIZES[kind]) for kind in TOKENIZER_KINDS}
