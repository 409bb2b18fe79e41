"""Hugging Face `datasets` as a data source: `data.name="hf:..."` (the optional `hf-datasets` extra).

    data.name="hf:/data/my_corpus"          # a DatasetDict written by `save_to_disk` (local or etils path)
    data.name="hf:wikitext:wikitext-2-raw-v1"  # a Hub dataset and its config: downloaded, or from the cache

The splits are data.train_split / data.eval_split and the text is the column
data.text_key, as for TFDS. A split is an Arrow table, memory-mapped and random
access, so it goes through the same grain pipeline (tokenize -> pack -> batch ->
shard, checkpointable) unchanged. A split or column that does not exist is an error
naming the field and what the dataset has, before anything compiles.
"""

from __future__ import annotations

PREFIX = "hf:"


def is_hf_dataset(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


class DatasetSource:
    """Records {text_key: str} of one split (grain's RandomAccessDataSource)."""

    def __init__(self, split, text_key: str):
        self._split, self.text_key = split, text_key

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, i: int) -> dict:
        return {self.text_key: self._split[int(i)][self.text_key]}

    def __repr__(self) -> str:
        return f"DatasetSource({len(self)} records)"


def hf_sources(name: str, text_key: str, train_split: str, eval_split: str) -> dict:
    """{"train": ..., "eval": ...} of the dataset `name` ("hf:PATH" or "hf:REPO[:CONFIG]")."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"data.name={name!r} reads a Hugging Face dataset: pip install -e '.[hf-datasets]'") from e
    target = name[len(PREFIX) :]
    if not target:
        raise ValueError(f"data.name={name!r}: name a dataset after 'hf:' (a save_to_disk folder or a Hub id)")
    try:
        if _is_saved_dataset(target):
            loaded = datasets.load_from_disk(target)
        else:
            repo, _, config = target.partition(":")
            loaded = datasets.load_dataset(repo, config or None)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        raise ValueError(f"data.name={name!r}: cannot load the dataset: {type(e).__name__}: {e}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"data.name={name!r} is a single split; save a DatasetDict with train and eval splits")
    out = {}
    for role, field, split in (("train", "data.train_split", train_split), ("eval", "data.eval_split", eval_split)):
        if split not in loaded:
            raise ValueError(f"{field}={split!r} is not a split of {name}; it has {sorted(loaded)}")
        if text_key not in loaded[split].column_names:
            raise ValueError(
                f"data.text_key={text_key!r} is not a column of {name}[{split}]; it has {loaded[split].column_names}"
            )
        out[role] = DatasetSource(loaded[split], text_key)
    return out


def _is_saved_dataset(target: str) -> bool:
    from etils import epath

    path = epath.Path(target)
    return (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()
