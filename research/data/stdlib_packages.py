"""A real classification task from local data: which standard-library package does a code snippet come from?

Examples are consecutive chunks of the tokenized `*.py` files of a few stdlib
packages (from the `python_stdlib` TFDS corpus), labelled by package. Files,
not chunks, are split between train and eval (by a hash of their path), so the
eval snippets come from files the model never saw: it must recognise a
package's vocabulary and style, not memorise a file.

Each example row: [CLS] + up to seq_len - 1 tokens, padded; segment_ids 1 on
the tokens, 0 on padding; label [1] int. Batches are dicts of int32 arrays
(tokens, segment_ids [rows, seq_len]; label [rows, 1]: 2-D like every batch
array, so one batch sharding fits all).
"""

from __future__ import annotations

import dataclasses
import hashlib

import grain
import numpy as np

from research.data.pipeline import DataSpec, load_sources


@dataclasses.dataclass(frozen=True)
class PackageSpec:
    packages: tuple[str, ...]  # the classes, in label order
    heldout_percent: int  # share of each package's files whose chunks are eval examples
    seq_len: int
    global_batch_size: int
    seed: int


def parse_packages(packages: str) -> tuple[str, ...]:
    out = tuple(p.strip() for p in packages.split(",") if p.strip())
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(f"classify.packages={packages!r} must name at least two distinct packages")
    return out


def is_heldout(path: str, percent: int) -> bool:
    bucket = int.from_bytes(hashlib.sha1(("classify:" + path).encode()).digest()[:8], "big") % 100
    return bucket < percent


def build_examples(data: DataSpec, spec: PackageSpec, tokenizer) -> dict[str, list[tuple[np.ndarray, int]]]:
    """{"train": [(tokens, label)], "eval": [...]}, every chunk of every file of the chosen packages."""
    sources = load_sources(data)
    out: dict[str, list] = {"train": [], "eval": []}
    seen = set()
    for source in (sources["train"], sources["eval"]):
        for i in range(len(source)):
            record = source[i]
            path = record["path"].decode() if isinstance(record["path"], bytes) else str(record["path"])
            package = path.split("/")[0]
            if package not in spec.packages or path in seen:
                continue
            seen.add(path)
            text = record[data.text_key]
            text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
            ids = np.asarray(tokenizer.encode(text), np.int32)
            n = spec.seq_len - 1
            split = "eval" if is_heldout(path, spec.heldout_percent) else "train"
            for start in range(0, len(ids), n):
                chunk = ids[start : start + n]
                if len(chunk) >= n // 4:  # a file's short tail says little
                    out[split].append((chunk, spec.packages.index(package)))
    missing = [p for p in spec.packages if not any(label == spec.packages.index(p) for _, label in out["train"])]
    if missing:
        raise ValueError(f"classify.packages {missing} have no files in {data.name}")
    return out


def render(example, seq_len: int, cls_id: int) -> dict:
    tokens, label = example
    row = np.zeros(seq_len, np.int32)
    row[0] = cls_id
    row[1 : 1 + len(tokens)] = tokens
    segment_ids = np.zeros(seq_len, np.int32)
    segment_ids[: 1 + len(tokens)] = 1
    return {"tokens": row, "segment_ids": segment_ids, "label": np.array([label], np.int32)}


def _batches(examples, spec: PackageSpec, cls_id, process_index, process_count, *, shuffle: bool):
    ds = grain.MapDataset.source(examples)[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=spec.seed)
    ds = ds.repeat().map(lambda e: render(e, spec.seq_len, cls_id))
    return ds.batch(spec.global_batch_size // process_count, drop_remainder=True)


def make_train_iterator(examples, spec: PackageSpec, cls_id: int, *, process_index: int, process_count: int):
    """Endless, reshuffled each epoch, checkpointable (a grain DatasetIterator)."""
    ds = _batches(examples, spec, cls_id, process_index, process_count, shuffle=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def make_eval_batches(examples, spec: PackageSpec, cls_id: int, *, num_examples: int, process_index, process_count):
    """The first `num_examples` eval examples (a fixed, shuffled-once sample covering every class), in batches."""
    order = np.random.default_rng(spec.seed).permutation(len(examples))[:num_examples]
    chosen = [examples[i] for i in order]
    per = spec.global_batch_size
    n = len(chosen) // per * per
    if n == 0:
        raise ValueError(f"{len(chosen)} eval examples are fewer than one batch of train.batch_size={per}")
    rows = [render(e, spec.seq_len, cls_id) for e in chosen[:n]]
    batches = []
    for start in range(0, n, per):
        part = rows[start : start + per][process_index::process_count]
        batches.append({k: np.stack([r[k] for r in part]) for k in part[0]})
    return batches


def majority_fraction(train, eval_examples) -> float:
    """Accuracy of always answering the most frequent training class, on the eval examples."""
    counts = np.bincount([label for _, label in train])
    majority = int(np.argmax(counts))
    return float(np.mean([label == majority for _, label in eval_examples]))
