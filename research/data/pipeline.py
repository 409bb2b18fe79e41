"""Grain input pipeline: TFDS text (or your own files) -> tokens -> packed rows -> per-process batches.

Sharding is what makes a multi-process run reproduce a single-process one:
each split is cut into `num_shards` strided shards, and every shard has its own
pipeline (shuffle -> tokenize -> pack -> batch of global_batch_size // num_shards
rows) seeded from (spec.seed, shard) alone. The global batch is the shards'
batches concatenated in shard order, and process p of P produces the slice of
shards p*k ... (p+1)*k - 1 (k = num_shards // P). So the global batch depends
on num_shards, never on the process count: with num_shards=2, one process
yields, row for row, what processes 0 and 1 of a two-process run yield together.

Every batch is a dict of int32 arrays [global_batch_size // process_count, seq_len]:
  tokens       document tokens, each document followed by EOS; 0 = padding
  segment_ids  1, 2, ... for the document fragments packed into the row; 0 = padding
  positions    position within the fragment in this row, restarting at 0, so a
               learned position table of seq_len entries suffices; 0 = padding

The train iterator is a plain grain DatasetIterator: orbax saves and restores it
with `grain.checkpoint.CheckpointSave/CheckpointRestore`.
"""

from __future__ import annotations

import copy
import dataclasses

import grain
import numpy as np
import tensorflow_datasets as tfds

from research.data import sentiment, stdlib_corpus  # noqa: F401  (register `toy_sentiment`, `python_stdlib` with TFDS)
from research.data.files import FileSource
from research.data.hf_datasets import hf_sources, is_hf_dataset


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the pipeline needs from the config; the train loop builds it from config.data."""

    name: str  # "python_stdlib" (our builder) or any TFDS text dataset, e.g. "tiny_shakespeare", "lm1b"
    data_dir: str | None  # TFDS data_dir; None = TFDS default
    text_key: str  # feature holding the text, usually "text"
    train_split: str  # "train"
    eval_split: str  # "validation"
    seq_len: int
    global_batch_size: int
    num_shards: int  # data shards; each process owns num_shards // process_count of them
    seed: int
    train_files: str = ""  # globs of .jsonl/.txt files: with eval_files, read instead of the TFDS dataset
    eval_files: str = ""


def load_sources(spec: DataSpec) -> dict:
    """Prepares the dataset if needed and returns random-access sources {"train": ..., "eval": ...}.

    Datasets that need a download follow TFDS rules (data_dir, manual_dir, ...);
    `python_stdlib` is generated from local files in about a second. With
    train_files and eval_files set, the sources are those files (research/data/files.py); a name
    "hf:..." is a Hugging Face dataset (research/data/hf_datasets.py).
    """
    if spec.train_files or spec.eval_files:
        return {
            "train": FileSource(spec.train_files, spec.text_key, "data.train_files"),
            "eval": FileSource(spec.eval_files, spec.text_key, "data.eval_files"),
        }
    if is_hf_dataset(spec.name):
        return hf_sources(spec.name, spec.text_key, spec.train_split, spec.eval_split)
    try:
        builder = tfds.builder(spec.name, data_dir=spec.data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        # `from None`: TFDS's own message lists every registered dataset.
        raise ValueError(f"data.name={spec.name!r} is not a TFDS dataset (nor 'python_stdlib')") from None
    builder.download_and_prepare()
    features = builder.info.features
    if spec.text_key not in features:
        raise ValueError(f"data.text_key={spec.text_key!r} is not a feature of {spec.name}; it has {sorted(features)}")
    for field in ("train_split", "eval_split"):
        split = getattr(spec, field)
        if split.split("[")[0] not in builder.info.splits:  # "train[:90%]" style slices are allowed
            known = sorted(builder.info.splits)
            raise ValueError(f"data.{field}={split!r} is not a split of {spec.name}; it has {known}")
    return {
        "train": builder.as_data_source(split=spec.train_split),
        "eval": builder.as_data_source(split=spec.eval_split),
    }


def make_train_iterator(
    spec: DataSpec, tokenizer, *, process_index: int, process_count: int, prefetch_batches: int = 0
) -> grain.DatasetIterator:
    """Endless, shuffled (a new order each epoch), checkpointable iterator over this process's batches.

    prefetch_batches: if > 0, one background thread keeps that many batches
    ready. Off by default: a batch of 16 x 256 takes ~0.2 ms on one core, and
    with JAX's async dispatch the host prepares it while the device computes;
    a thread only adds GIL contention on a 2-core machine. Worth turning on
    when the loop blocks on the device every step and batches are large.
    """
    _check_spec(spec, process_index, process_count)
    source = load_sources(spec)["train"]
    dataset = _process_dataset(source, spec, tokenizer, process_index, process_count, shuffle=True)
    if prefetch_batches:
        dataset = grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=prefetch_batches)
    return iter(dataset)


def make_eval_batches(
    spec: DataSpec, tokenizer, *, num_batches: int, process_index: int, process_count: int
) -> list[dict]:
    """The first `num_batches` batches of the eval split in its stored order (no shuffle), packed like training."""
    _check_spec(spec, process_index, process_count)
    source = load_sources(spec)["eval"]
    iterator = iter(_process_dataset(source, spec, tokenizer, process_index, process_count, shuffle=False))
    return [next(iterator) for _ in range(num_batches)]


def document_texts(spec: DataSpec, split: str = "train", *, max_bytes: int | None = None) -> list[str]:
    """The split's documents as str, in stored order, until `max_bytes` UTF-8 bytes.

    Deterministic, so every process trains the same tokenizer from it, and the
    held-out texts of an experiment are the same for every run.
    """
    source = load_sources(spec)["train" if split == "train" else "eval"]
    texts, total = [], 0
    for i in range(len(source)):
        value = source[i][spec.text_key]
        text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        texts.append(text)
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break
    return texts


def _check_spec(spec: DataSpec, process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if spec.num_shards < 1 or spec.num_shards % process_count:
        raise ValueError(
            f"data.num_shards={spec.num_shards} must be a positive multiple of the process count ({process_count})"
        )
    if spec.global_batch_size < 1 or spec.global_batch_size % spec.num_shards:
        raise ValueError(
            f"train.batch_size={spec.global_batch_size} must be a positive multiple of"
            f" data.num_shards={spec.num_shards} (each shard yields an equal part of the batch)"
        )
    if spec.seq_len < 1:
        raise ValueError(f"seq_len={spec.seq_len} must be positive")
    if spec.seed < 0:
        raise ValueError(f"seed={spec.seed} must be non-negative")


def _process_dataset(source, spec, tokenizer, process_index, process_count, *, shuffle) -> grain.IterDataset:
    """This process's batches: its shards' batches, concatenated in shard order."""
    per_process = spec.num_shards // process_count
    shards = range(process_index * per_process, (process_index + 1) * per_process)
    per_shard = [_shard_dataset(source, spec, tokenizer, shard, shuffle=shuffle) for shard in shards]
    return grain.experimental.ZipIterDataset(per_shard).map(_concat_batches)


def _shard_dataset(source, spec, tokenizer, shard, *, shuffle) -> grain.IterDataset:
    """Batches of global_batch_size // num_shards packed rows from records shard, shard + num_shards, ..."""
    records = grain.MapDataset.source(source)[shard :: spec.num_shards]
    if len(records) == 0:
        raise ValueError(
            f"data.num_shards={spec.num_shards} leaves shard {shard} empty: the split has only {len(source)} records"
        )
    if shuffle:
        records = records.shuffle(seed=_shard_seed(spec.seed, shard))
    # Endless: with a shuffle, grain reseeds each epoch (a new order derived
    # from the same seed); without one (eval), a split smaller than the batches
    # asked for simply repeats.
    records = records.repeat()
    text_key = spec.text_key
    documents = records.map(lambda record: tokenizer.encode(record[text_key], add_eos=True))
    # Reads happen on the caller's thread: these are local files, and a
    # thread pool would only compete with training for the 2 CPU cores.
    documents = documents.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return PackedRows(documents, spec.seq_len).batch(spec.global_batch_size // spec.num_shards, drop_remainder=True)


def _shard_seed(seed: int, shard: int) -> int:
    # Hashing (seed, shard) rather than adding them keeps shards, and nearby
    # seeds, from sharing shuffles (grain seeds epoch e with seed + e).
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def _concat_batches(shard_batches: tuple[dict, ...]) -> dict:
    return {key: np.concatenate([batch[key] for batch in shard_batches]) for key in shard_batches[0]}


class PackedRows(grain.IterDataset):
    """Concatenates 1-D token arrays and cuts the stream into rows of exactly seq_len.

    Nothing is dropped or padded except the end of a finite stream, whose last
    row is zero-padded. A row holds one fragment per document it touches.

    Why not grain.experimental.ConcatThenSplitIterDataset: its checkpoint state
    holds tuples that come back as lists from the JSON file grain's orbax
    handler writes, and the restored iterator then skips a document.
    """

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len

    def __iter__(self) -> grain.DatasetIterator:
        return _PackedRowsIterator(self._parent.__iter__(), self._seq_len)


class _PackedRowsIterator(grain.DatasetIterator):
    """State: the parent's state before the current document, plus how many of its tokens are used.

    A restore re-reads that one document from the parent, so the state is two
    small JSON values and restoring costs one read.
    """

    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._arange = np.arange(seq_len, dtype=np.int32)
        self._document = None  # [doc_len] tokens of the document being cut, or None
        self._document_state = None  # parent state just before `_document` was read
        self._used = 0  # tokens of `_document` already emitted

    def __next__(self) -> dict:
        tokens, segment_ids, positions = (np.zeros(self._seq_len, np.int32) for _ in range(3))
        filled, segment = 0, 0
        while filled < self._seq_len:
            if self._document is None or self._used == len(self._document):
                state = copy.deepcopy(self._parent.get_state())
                try:
                    self._document = np.asarray(next(self._parent), np.int32)
                except StopIteration:
                    self._document = None
                    break
                self._document_state, self._used = state, 0
                continue  # an empty document adds no segment
            take = min(self._seq_len - filled, len(self._document) - self._used)
            segment += 1
            tokens[filled : filled + take] = self._document[self._used : self._used + take]
            segment_ids[filled : filled + take] = segment
            positions[filled : filled + take] = self._arange[:take]
            filled += take
            self._used += take
        if filled == 0:
            raise StopIteration
        return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}

    def get_state(self) -> dict:
        if self._document is None:
            return {"parent": copy.deepcopy(self._parent.get_state()), "used": 0}
        return {"parent": copy.deepcopy(self._document_state), "used": self._used}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._document, self._document_state, self._used = None, None, 0
        if state["used"]:
            self._document_state = copy.deepcopy(state["parent"])
            self._document = np.asarray(next(self._parent), np.int32)
            self._used = state["used"]
