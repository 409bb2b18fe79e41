"""One vector index over three search methods, optionally sharded over a mesh's `data` axis.

    index = Index(128, method="lsh", num_tables=32, num_bits=18, num_probes=8)
    index.add(vectors, ids)                 # [n, 128]; ids default to 0, 1, 2, ...
    scores, ids = index.search(queries, 10)  # [q, 10] cosine similarities, [q, 10] int64 ids
    index.save("dir"); Index.load("dir")

The index keeps the (unit-normalized) vectors and ids on the host and builds
its device state lazily at the first search after an `add`: the vectors, and
for LSH the sorted hash tables. With a mesh, rows are split into equal
contiguous blocks, one per `data` shard (the last padded with rows that can
never match); each shard finds its own top-k and the shards' lists are merged
with an all_gather, so a sharded search returns what the unsharded one does.

Missing results (LSH can find fewer than k candidates) have score -inf and id -1.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.embeddings import approx, lsh
from research.embeddings.similarity import DEFAULT_CHUNK_SIZE, chunked_top_k_by_dot, grouped_top_k, normalize

METHODS = ("exact", "lsh", "approx")
DEFAULT_OPTIONS = {
    "exact": {"chunk_size": DEFAULT_CHUNK_SIZE},
    "approx": {"chunk_size": DEFAULT_CHUNK_SIZE, "recall_target": 0.95},
    "lsh": dataclasses.asdict(lsh.LSHConfig()),
}
QUERY_BATCH = 1024  # queries per device call; smaller batches are padded to a power of two (few compiles)
FORMAT = "research.embeddings.Index/1"
METADATA_FILE, ARRAYS_FILE = "index.json", "vectors.npz"


class Index:
    def __init__(self, dim: int, *, method: str = "exact", mesh: jax.sharding.Mesh | None = None, **method_options):
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        unknown = set(method_options) - set(DEFAULT_OPTIONS[method])
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for method {method!r}; allowed: {sorted(DEFAULT_OPTIONS[method])}"
            )
        if mesh is not None and "data" not in mesh.axis_names:
            raise ValueError(f"the mesh must have a 'data' axis to shard rows over, got axes {mesh.axis_names}")
        self.dim, self.method, self.mesh = int(dim), method, mesh
        self.options = {**DEFAULT_OPTIONS[method], **method_options}
        if method == "lsh":
            self._lsh = lsh.LSHConfig(**self.options)  # validates the LSH options now, not at the first search
        if method == "approx":
            approx.approx_top_k_selector(self.options["recall_target"])  # validates recall_target
        if self.options.get("chunk_size", 1) < 1:
            raise ValueError(f"option chunk_size={self.options['chunk_size']} must be >= 1")
        self._vectors = np.zeros((0, self.dim), np.float32)  # unit rows (zero rows stay zero)
        self._ids = np.zeros((0,), np.int64)
        self._device = None  # (search function, device arrays), rebuilt after each add

    def __len__(self) -> int:
        return len(self._ids)

    # --- adding and searching -------------------------------------------------------------------

    def add(self, vectors, ids=None) -> None:
        """Adds [n, dim] (or one [dim]) vectors; ids are distinct integers, by default continuing 0, 1, 2, ..."""
        vectors = self._check_vectors(vectors, "vectors", "the index was created with dim")
        if ids is None:
            first = int(self._ids.max()) + 1 if len(self) else 0
            ids = np.arange(first, first + len(vectors), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (len(vectors),) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be {len(vectors)} integers (one per vector), got {ids.dtype} {ids.shape}")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids).any():
            raise ValueError("ids must be distinct, also from the ids already in the index")
        self._vectors = np.concatenate([self._vectors, np.asarray(normalize(vectors))])
        self._ids = np.concatenate([self._ids, ids.astype(np.int64)])
        self._device = None

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine similarity: (scores [q, k] float32 descending, ids [q, k] int64); [dim] gives [k]."""
        if not len(self):
            raise ValueError("cannot search an empty index: add vectors first")
        single = np.ndim(queries) == 1
        queries = self._check_vectors(queries, "query vectors", "the index stores dim")
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > len(self):
            raise ValueError(f"k={k} is larger than the number of stored vectors ({len(self)})")
        if self._device is None:
            self._device = self._build_device_state()
        search_fn, arrays = self._device
        scores, rows = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.int32)]  # for zero queries
        for first in range(0, len(queries), QUERY_BATCH):
            batch = queries[first : first + QUERY_BATCH]
            padded = min(QUERY_BATCH, 1 << max(3, math.ceil(math.log2(len(batch)))))
            batch = np.pad(batch, ((0, padded - len(batch)), (0, 0)))
            s, r = search_fn(jnp.asarray(batch), *arrays, k=int(k))
            scores.append(np.asarray(s)[: len(queries) - first])
            rows.append(np.asarray(r)[: len(queries) - first])
        scores, rows = np.concatenate(scores), np.concatenate(rows)
        ids = np.where(np.isfinite(scores), self._ids[np.clip(rows, 0, len(self) - 1)], -1)
        return (scores[0], ids[0]) if single else (scores, ids)

    def _check_vectors(self, x, what: str, expected: str) -> np.ndarray:
        x = np.asarray(x)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{what} must be a [n, {self.dim}] numeric array, got {x.dtype} {x.shape}")
        if x.shape[1] != self.dim:
            raise ValueError(f"{what} have dimension {x.shape[1]}, but {expected}={self.dim}")
        with np.errstate(over="ignore"):  # an overflow becomes inf, which the check below reports
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values (in float32)")
        return x

    # --- device state: one search function per method, sharded or not ----------------------------

    def _build_device_state(self):
        shards = self.mesh.shape["data"] if self.mesh is not None else 1
        rows_per_shard = -(-len(self) // shards)
        vectors = np.zeros((rows_per_shard * shards, self.dim), np.float32)
        vectors[: len(self)] = self._vectors
        arrays = [vectors]
        if self.method == "lsh":
            planes = lsh.hyperplanes(self._lsh, self.dim)
            shard_tables = [
                lsh.build_tables(
                    block, planes, self._lsh, num_valid=min(max(len(self) - s * rows_per_shard, 0), len(block))
                )
                for s, block in enumerate(np.split(vectors, shards))
            ]
            sorted_codes, order = (np.concatenate(parts, axis=1) for parts in zip(*shard_tables, strict=True))
            arrays += [sorted_codes, order, planes]
        local = functools.partial(_search_shard, method=self.method, options=self.options, num_stored=len(self))
        if self.mesh is None:
            return jax.jit(local, static_argnames="k"), [jnp.asarray(a) for a in arrays]
        specs = [P("data"), P(None, "data"), P(None, "data"), P()][: len(arrays)]
        arrays = [jax.device_put(a, NamedSharding(self.mesh, s)) for a, s in zip(arrays, specs, strict=True)]

        def sharded(queries, *arrays, k):
            body = functools.partial(local, k=k, axis_name="data")
            # check_vma=False: all_gather's result is typed as varying over `data`, but every shard then
            # merges the same gathered lists, so the output really is replicated (out_specs=P()).
            run = jax.shard_map(body, mesh=self.mesh, in_specs=(P(), *specs), out_specs=P(), check_vma=False)
            return run(queries, *arrays)

        return jax.jit(sharded, static_argnames="k"), arrays

    # --- persistence ----------------------------------------------------------------------------

    def save(self, path) -> None:
        """Writes directory `path`: index.json (dim, method, options) and vectors.npz (unit vectors, ids)."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "dim": self.dim,
            "method": self.method,
            "options": self.options,
            "count": len(self),
        }
        tmp = path / (ARRAYS_FILE + ".tmp")
        with open(tmp, "wb") as f:  # write-then-rename: a crash never leaves a half-written vectors.npz
            np.savez(f, vectors=self._vectors, ids=self._ids)
        os.replace(tmp, path / ARRAYS_FILE)
        (path / METADATA_FILE).write_text(json.dumps(metadata, indent=1))

    @classmethod
    def load(cls, path, *, mesh: jax.sharding.Mesh | None = None) -> "Index":
        """Reads what `save` wrote; any missing, unreadable or inconsistent part is a ValueError naming it."""
        path = pathlib.Path(path)
        for name in (METADATA_FILE, ARRAYS_FILE):
            if not (path / name).is_file():
                raise ValueError(f"no saved index at {path}: {name} is missing")
        try:
            metadata = json.loads((path / METADATA_FILE).read_text())
            dim, method, options, count = (metadata[key] for key in ("dim", "method", "options", "count"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"corrupt {path / METADATA_FILE}: {e!r}") from e
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path / METADATA_FILE} has format {metadata.get('format')!r}, expected {FORMAT!r}")
        try:
            with np.load(path / ARRAYS_FILE, allow_pickle=False) as arrays:
                vectors, ids = arrays["vectors"], arrays["ids"]
        except Exception as e:  # zipfile, pickle and KeyError failures alike mean the file is unusable
            raise ValueError(f"corrupt {path / ARRAYS_FILE}: {e!r}") from e
        if (
            vectors.shape != (count, dim)
            or vectors.dtype != np.float32
            or ids.shape != (count,)
            or ids.dtype != np.int64
        ):
            raise ValueError(
                f"corrupt {path / ARRAYS_FILE}: expected float32 vectors {(count, dim)} and int64 ids {(count,)}, "
                f"got {vectors.dtype} {vectors.shape} and {ids.dtype} {ids.shape}"
            )
        index = cls(dim, method=method, mesh=mesh, **options)
        index._vectors, index._ids = vectors, ids  # already unit rows: re-normalizing could change the last bit
        return index


def _search_shard(queries, vectors, *tables, k, method, options, num_stored, axis_name=None):
    """Top-k over this shard's rows (all rows when unsharded), then the merge across shards."""
    shard = 0 if axis_name is None else jax.lax.axis_index(axis_name)
    first_row = shard * vectors.shape[0]
    num_valid = None if axis_name is None else jnp.clip(num_stored - first_row, 0, vectors.shape[0])  # shard padding
    queries = normalize(queries)
    if method == "lsh":
        config = lsh.LSHConfig(**options)
        sorted_codes, order, planes = tables
        rows, valid = lsh.candidates(queries, planes, sorted_codes, order, config, axis_name)
        scores, rows = lsh.rerank(queries, vectors, rows, valid, k)
    else:
        select = grouped_top_k
        if method == "approx":
            select = approx.approx_top_k_selector(options["recall_target"], num_stored)
        scores, rows = chunked_top_k_by_dot(
            queries, vectors, k, chunk_size=options["chunk_size"], num_valid=num_valid, select_top_k=select
        )
    rows = rows + first_row
    if axis_name is not None:
        scores = jax.lax.all_gather(scores, axis_name, axis=1, tiled=True)  # [q, shards * k'], in shard order
        rows = jax.lax.all_gather(rows, axis_name, axis=1, tiled=True)
        scores, where = jax.lax.top_k(scores, min(k, scores.shape[1]))  # ties: the earlier shard, i.e. the lower row
        rows = jnp.take_along_axis(rows, where, axis=-1)
    missing = k - scores.shape[1]  # LSH with fewer than k candidate slots
    return jnp.pad(scores, ((0, 0), (0, missing)), constant_values=-jnp.inf), jnp.pad(rows, ((0, 0), (0, missing)))
