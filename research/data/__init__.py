"""Data: tokenizers, locally generated TFDS corpora, and the grain input pipeline."""

from research.data.pipeline import DataSpec, load_sources, make_eval_batches, make_train_iterator
from research.data.stdlib_corpus import PythonStdlib
from research.tokenizers import ByteTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "DataSpec",
    "PythonStdlib",
    "load_sources",
    "load_tokenizer",
    "make_eval_batches",
    "make_train_iterator",
]
