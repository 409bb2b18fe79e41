"""`python_stdlib`: a text corpus of the running interpreter's standard library.

Every machine that runs this code already holds ~30 MB of real, varied text in
its standard library, so experiments get a corpus with no download at all.

Each example is one `*.py` file: `text` (its source) and `path` (its path under
the stdlib root, POSIX style). Third-party packages (site-packages,
dist-packages) are left out so the corpus does not depend on what is installed.
Files go to `validation` when a sha1 of their path falls in the bottom
VALIDATION_PERCENT of buckets, `train` otherwise: the split depends on nothing
but the path, so a file never moves between splits when others come or go.

The stdlib differs between Python versions, so the config is named after the
minor version (`py3.11`): interpreters of different versions never share a data
directory by accident.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds
from etils import epath

VALIDATION_PERCENT = 5
_THIRD_PARTY_DIRS = frozenset({"site-packages", "dist-packages"})


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def list_python_files(root: pathlib.Path) -> list[str]:
    """Sorted relative POSIX paths of the `*.py` files under root, third-party dirs excluded."""
    paths = []
    for path in root.rglob("*.py"):  # does not follow directory symlinks
        rel = path.relative_to(root)
        if path.is_file() and not _THIRD_PARTY_DIRS.intersection(rel.parts):
            paths.append(rel.as_posix())
    return sorted(paths)


def split_of(rel_path: str) -> str:
    """'train' or 'validation', from a hash of the path alone (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.sha1(rel_path.encode("utf-8")).digest()[:8], "big") % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
    """The `*.py` files of this interpreter's standard library, one example per file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=f"py{sys.version_info.major}.{sys.version_info.minor}",
            description=f"Standard library of Python {sys.version_info.major}.{sys.version_info.minor}.",
        )
    ]

    # TFDS locates a builder that lives in a package via `importlib_resources`,
    # a backport that is not installed here (and not needed on Python >= 3.9);
    # the answer is simply this file, so give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: `dataset_info_from_configs` looks for metadata files
        # next to the builder's module, which only exist inside TFDS packages.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
            homepage="https://docs.python.org/3/library/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the files are on this machine.
        root = stdlib_root()
        by_split = {"train": [], "validation": []}
        for rel_path in list_python_files(root):
            by_split[split_of(rel_path)].append(rel_path)
        return {split: self._generate_examples(root, paths) for split, paths in by_split.items()}

    def _generate_examples(self, root: pathlib.Path, rel_paths: list[str]):
        for rel_path in rel_paths:
            # A few test fixtures are deliberately not UTF-8 (latin-1, koi8-r
            # source-encoding tests). Replacing their bad bytes keeps them in the
            # corpus and keeps the builder total; it would be wrong only for a
            # task that needs those exact bytes, which language modelling does not.
            text = (root / rel_path).read_bytes().decode("utf-8", errors="replace")
            yield rel_path, {"text": text, "path": rel_path}
