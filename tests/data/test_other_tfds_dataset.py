"""The pipeline takes any TFDS text dataset by name, not only python_stdlib.

Public datasets (tiny_shakespeare, lm1b) need a download, so this builds a
small TFDS dataset of its own, registered under its own name with another text
feature name, and reads it through the same `load_sources` / iterator path.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from research.data import ByteTokenizer, DataSpec, make_eval_batches, make_train_iterator

LINES = [f"line {i}: " + "to be or not to be " * (i % 5 + 1) for i in range(60)]


class TinyPlays(tfds.core.GeneratorBasedBuilder):
    """Shaped like tiny_shakespeare: one text feature (named 'play' here), train/validation splits."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # see research/data/stdlib_corpus.py for why
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"play": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(LINES[:50]), "validation": self._generate_examples(LINES[50:])}

    def _generate_examples(self, lines):
        for i, line in enumerate(lines):
            yield i, {"play": line}


def spec(data_dir, **overrides):
    fields = dict(
        name="tiny_plays",
        data_dir=str(data_dir),
        text_key="play",
        train_split="train",
        eval_split="validation",
        seq_len=32,
        global_batch_size=4,
        num_shards=1,
        seed=0,
    )
    return DataSpec(**{**fields, **overrides})


def test_any_tfds_text_dataset_by_name(tmp_path):
    tok = ByteTokenizer()
    batch = next(make_train_iterator(spec(tmp_path), tok, process_index=0, process_count=1))
    assert batch["tokens"].shape == (4, 32)
    text = b"".join(bytes(int(t) - tok.byte_offset for t in row if t >= tok.byte_offset) for row in batch["tokens"])
    assert b"to be or not" in text
    evals = make_eval_batches(spec(tmp_path), tok, num_batches=2, process_index=0, process_count=1)
    eval_text = b"".join(
        bytes(int(t) - tok.byte_offset for t in row if t >= tok.byte_offset) for row in evals[0]["tokens"]
    )
    assert any(line.encode()[:12] in eval_text for line in LINES[50:])
    assert np.all(batch["segment_ids"] >= 0)


def test_wrong_text_key_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="data.text_key='text'"):
        make_train_iterator(spec(tmp_path, text_key="text"), ByteTokenizer(), process_index=0, process_count=1)
