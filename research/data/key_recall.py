"""`key_recall`: a synthetic long-range task, generated locally: recall a key seen far back.

Each document is exactly `length - 1` characters, so with the EOS the byte
tokenizer appends it fills one packed row of `length` tokens (set
data.seq_len = length):

    ....K.................................................=K

One uppercase key letter sits at a random position in the first eighth of the
document, dots fill the rest, and the document ends with '=' and the key again.
Predicting the last letter needs attention from the '=' back to a token at
least 7/8 of the row away: a local-only model (a window shorter than that, even
stacked over its layers) sits at chance (1/26), while dense, global-token or
strided attention can solve it. `answer_index(length)` is where the answer
sits; the experiment scores next-token accuracy there.

Configs: `key_recall/len{64,128,256,512,1024}`; splits `train` (8192 documents)
and `validation` (512), from fixed seeds, so every machine generates the same data.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

LENGTHS = (64, 128, 256, 512, 1024)
SPLIT_SIZES = {"train": 8192, "validation": 512}
_SEEDS = {"train": 0, "validation": 1}
KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def answer_index(length: int) -> int:
    """Token index (in a row of `length` tokens) of the recalled key; the '=' is just before it."""
    return length - 2


def make_document(length: int, rng: np.random.Generator) -> str:
    """One document of length - 1 characters: a key in the first eighth, dots, '=' and the key."""
    if length < 16:
        raise ValueError(f"key_recall length={length} must be >= 16")
    key = KEYS[rng.integers(len(KEYS))]
    pos = int(rng.integers(max(length // 8, 1)))
    body = ["."] * (length - 3)
    body[pos] = key
    return "".join(body) + "=" + key


class KeyRecall(tfds.core.GeneratorBasedBuilder):
    """Recall one key letter placed at least 7/8 of the row back."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=f"len{n}", description=f"Documents of {n} tokens (with EOS).") for n in LENGTHS
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # as in stdlib_corpus: no importlib_resources needed
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to download
        length = int(self.builder_config.name.removeprefix("len"))
        return {split: self._generate_examples(length, split) for split in SPLIT_SIZES}

    def _generate_examples(self, length: int, split: str):
        rng = np.random.default_rng([_SEEDS[split], length])
        for i in range(SPLIT_SIZES[split]):
            yield i, {"text": make_document(length, rng)}
