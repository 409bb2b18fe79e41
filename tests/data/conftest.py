"""Shared data fixtures: a tiny fake stdlib tree, prepared once per session with the real builder.

Preparing the real stdlib takes about a second, but its content changes with
the interpreter; the fake tree has known documents (multi-byte UTF-8, an empty
file, a file that is not UTF-8, third-party dirs that must be skipped).
"""

import pathlib
from unittest import mock

import numpy as np
import pytest

from research.data import stdlib_corpus

_NUM_MODULES = 120  # test_pipeline counts on it
_ALPHABET = list("abcdefghij \n\t:()=_") + ["é", "λ", "中", "😀"]


def _fake_document(i: int, rng: np.random.Generator) -> str:
    # A unique header makes every document distinguishable in the packed stream.
    length = int(rng.integers(0, 700))
    return f"# doc {i}\n" + "".join(rng.choice(_ALPHABET, size=length))


@pytest.fixture(scope="session")
def fake_stdlib(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("fake_stdlib")
    rng = np.random.default_rng(0)
    for i in range(_NUM_MODULES):
        path = root / f"pkg{i % 7}" / f"mod_{i:03d}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(_fake_document(i, rng), encoding="utf-8")
    (root / "empty.py").write_text("")
    (root / "latin1.py").write_bytes(b"# caf\xe9 is latin-1, not UTF-8\n")
    (root / "README.txt").write_text("not python")
    for third_party in ("site-packages", "dist-packages"):
        (root / third_party / "somepkg").mkdir(parents=True)
        (root / third_party / "somepkg" / "thirdparty.py").write_text("x = 1\n")
    return root


@pytest.fixture(scope="session")
def prepare_fake_corpus(fake_stdlib):
    """A function data_dir -> PythonStdlib builder, prepared from the fake tree into data_dir."""

    def prepare(data_dir: pathlib.Path) -> stdlib_corpus.PythonStdlib:
        with mock.patch.object(stdlib_corpus, "stdlib_root", lambda: fake_stdlib):
            builder = stdlib_corpus.PythonStdlib(data_dir=str(data_dir), file_format="array_record")
            builder.download_and_prepare()
        return builder

    return prepare


@pytest.fixture(scope="session")
def fake_data_dir(prepare_fake_corpus, tmp_path_factory) -> str:
    """A TFDS data_dir holding `python_stdlib` generated from the fake tree."""
    data_dir = tmp_path_factory.mktemp("tfds")
    prepare_fake_corpus(data_dir)
    return str(data_dir)
