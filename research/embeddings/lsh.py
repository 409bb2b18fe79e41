"""Random-hyperplane LSH (SimHash) for cosine search, laid out for XLA's static shapes.

Hashing. Table l draws `num_bits` Gaussian hyperplanes; a vector's code in that
table is the sign bits of its projections onto them. Two vectors at angle theta
agree on one bit with probability 1 - theta / pi, so near neighbours share a
code far more often than unrelated vectors do. More bits make buckets smaller
(fewer, purer candidates); more tables give a neighbour more chances to collide
(higher recall); both cost time.

Layout: sorted codes, not hash maps. Per table we keep the codes sorted
ascending and `order`, the row permutation that sorts them (stable, so equal
codes keep increasing row order). A bucket is then one contiguous range
[start, end) of `order`, found by two binary searches (jnp.searchsorted). No
ragged lists, no dictionaries: every array has a static shape, and a query
costs O(tables * probes * log n) plus the candidates it touches, not O(n).
(The alternative, packed-bit sketches compared by Hamming distance against
every row, is still a pass over all n rows per query, like exact search, whose
matmul a CPU already runs near its peak; buckets are what make LSH sub-linear.)

Multi-probe. Besides its own bucket, a query also visits the buckets reached by
flipping each of its `num_probes - 1` least confident bits (the projections
closest to zero, whose sign a neighbour is most likely to disagree on). Probes
buy recall with fewer tables, i.e. less memory.

Candidate budget. Each table yields at most `max_candidates_per_table` rows:
its buckets' members in probe order (own bucket first), each bucket in row
order, cut at the budget. This is what makes the candidate array a static
[queries, tables * budget]; a budget that buckets often exceed costs recall.

Rerank. A row found by several tables fills several slots, so each query's
candidate rows are sorted (copies become neighbours and are dropped), scored
exactly (dot product of unit vectors) and the top-k kept; ties go to the lower
row, as in exact search. Fewer than k distinct candidates leave -inf entries
(the index reports them as id -1).

Sharding. Each shard hashes its own rows with the same hyperplanes. To keep the
candidate set identical to the unsharded one (the budget cut included), shards
exchange their bucket sizes (an all_gather of [queries, tables, probes] ints)
so each knows how many members of a bucket lie in earlier shards, i.e. where
its own members fall in the global row order.

Measured (python -m research.bench.ann --n 1000000, clustered 1M x 128, 1000
queries, 2 CPU cores): 32 tables x 18 bits x 8 probes, budget 64 gives
recall@10 0.96 at ~10x the exact search's queries/s; 4 probes and budget 32,
0.87 at ~19x; 16 bits and budget 128, 0.985 at ~5x.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

PAD_CODE = -1  # code of padding rows: real codes are >= 0, so no query bucket ever contains them


@dataclasses.dataclass(frozen=True)
class LSHConfig:
    """Defaults suit 10^5 to 10^6 vectors; research/bench/ann.py measures the trade-offs."""

    num_tables: int = 32
    num_bits: int = 16  # about log2(n) - 2: a bucket then holds a few strangers besides the query's own cluster
    num_probes: int = 8  # buckets visited per table: own + (num_probes - 1) single-bit flips
    max_candidates_per_table: int = 64
    seed: int = 0

    def __post_init__(self):
        checks = {
            "num_tables": self.num_tables >= 1,
            "num_bits": 1 <= self.num_bits <= 30,  # codes are int32 and PAD_CODE must stay below them
            "num_probes": 1 <= self.num_probes <= self.num_bits + 1,
            "max_candidates_per_table": self.max_candidates_per_table >= 1,
        }
        allowed = {
            "num_tables": ">= 1",
            "num_bits": "in [1, 30]",
            "num_probes": f"in [1, num_bits + 1 = {self.num_bits + 1}]",
            "max_candidates_per_table": ">= 1",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"LSH option {name}={getattr(self, name)} must be {allowed[name]}")


def hyperplanes(config: LSHConfig, dim: int) -> np.ndarray:
    """[dim, num_tables * num_bits] float32 Gaussian hyperplane normals, from config.seed alone."""
    rng = np.random.default_rng(config.seed)
    return rng.standard_normal((dim, config.num_tables * config.num_bits)).astype(np.float32)


def _projections(x: jax.Array, planes: jax.Array, config: LSHConfig) -> jax.Array:
    proj = jnp.dot(x, planes, preferred_element_type=jnp.float32)
    return proj.reshape(x.shape[0], config.num_tables, config.num_bits)  # [rows, tables, bits]


def _bits_to_codes(bits: jax.Array) -> jax.Array:
    """[..., num_bits] bool -> [...] int32, bit b worth 2**b."""
    weights = jnp.left_shift(1, jnp.arange(bits.shape[-1], dtype=jnp.int32))
    return jnp.sum(jnp.where(bits, weights, 0), axis=-1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames="config")
def hash_codes(x: jax.Array, planes: jax.Array, config: LSHConfig) -> jax.Array:
    """[rows, dim] -> [rows, num_tables] int32 codes."""
    return _bits_to_codes(_projections(x, planes, config) > 0)


def build_tables(vectors: np.ndarray, planes: np.ndarray, config: LSHConfig, num_valid: int | None = None):
    """Host-side build: (sorted_codes, order), both [num_tables, rows] int32.

    Rows at index >= num_valid (shard padding) get PAD_CODE, which sorts first and matches no query.
    """
    rows = vectors.shape[0]
    num_valid = rows if num_valid is None else num_valid
    codes = np.full((rows, config.num_tables), PAD_CODE, np.int32)
    for first in range(0, num_valid, 65536):  # chunks bound the [rows, tables * bits] projections
        last = min(first + 65536, num_valid)
        codes[first:last] = np.asarray(hash_codes(vectors[first:last], planes, config))
    order = np.argsort(codes.T, axis=1, kind="stable").astype(np.int32)  # [tables, rows]
    return np.take_along_axis(codes.T, order, axis=1), order


def probe_codes(queries: jax.Array, planes: jax.Array, config: LSHConfig) -> jax.Array:
    """[q, dim] -> [q, num_tables, num_probes] codes: own bucket, then flips of the least confident bits."""
    proj = _projections(queries, planes, config)
    codes = _bits_to_codes(proj > 0)[..., None]  # [q, tables, 1]
    if config.num_probes == 1:
        return codes
    _, shakiest = jax.lax.top_k(-jnp.abs(proj), config.num_probes - 1)  # [q, tables, probes - 1] bit positions
    return jnp.concatenate([codes, jnp.bitwise_xor(codes, jnp.left_shift(1, shakiest))], axis=-1)


def candidates(
    queries: jax.Array,
    planes: jax.Array,
    sorted_codes: jax.Array,
    order: jax.Array,
    config: LSHConfig,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Candidate rows [q, tables * budget] int32 and their validity mask, for this shard's rows.

    With axis_name (inside shard_map over row shards), the budget cut follows the global row order.
    """
    num_rows = order.shape[1]
    budget = config.max_candidates_per_table
    probes = probe_codes(queries, planes, config)  # [q, tables, probes]
    search = jax.vmap(jnp.searchsorted, in_axes=(0, 1, None), out_axes=1)  # one sorted array per table
    start = search(sorted_codes, probes, "left")  # [q, tables, probes]
    count = search(sorted_codes, probes, "right") - start
    if axis_name is None:
        earlier_shards = jnp.zeros_like(count)
        total = count
    else:
        every = jax.lax.all_gather(count, axis_name)  # [shards, q, tables, probes]
        before_me = jnp.arange(every.shape[0]) < jax.lax.axis_index(axis_name)
        earlier_shards = jnp.sum(jnp.where(before_me[:, None, None, None], every, 0), axis=0)
        total = jnp.sum(every, axis=0)
    # Where each probe's bucket begins in the table's global candidate list, and in this shard's own list.
    global_first = jnp.cumsum(total, axis=-1) - total + earlier_shards  # [q, tables, probes]
    local_end = jnp.cumsum(count, axis=-1)
    slot = jnp.arange(budget, dtype=jnp.int32)  # [budget]
    probe_of_slot = jnp.sum(slot[:, None] >= local_end[..., None, :], axis=-1)  # [q, tables, budget]
    probe = jnp.minimum(probe_of_slot, config.num_probes - 1)
    take = lambda a: jnp.take_along_axis(a, probe, axis=-1)  # [q, tables, probes] -> [q, tables, budget]
    member = slot - (take(local_end) - take(count))  # index of the slot's row inside its bucket
    valid = (probe_of_slot < config.num_probes) & (take(global_first) + member < budget)
    position = jnp.minimum(take(start) + member, num_rows - 1)
    table = jnp.arange(config.num_tables, dtype=jnp.int32)[:, None]
    rows = order.reshape(-1)[table * num_rows + position]  # [q, tables, budget]
    rows = jnp.where(valid, rows, 0)  # a defined value; `valid` is what says the slot is empty
    return rows.reshape(queries.shape[0], -1), valid.reshape(queries.shape[0], -1)


def rerank(
    queries: jax.Array,
    vectors: jax.Array,
    rows: jax.Array,
    valid: jax.Array,
    k: int,
    queries_per_step: int = 8,
) -> tuple[jax.Array, jax.Array]:
    """Exact top-k distinct rows among the candidates: (scores [q, k'], rows [q, k']), k' = min(k, candidates).

    Runs `queries_per_step` queries at a time (lax.map): their gathered candidate vectors
    ([8, 2048, 128] float32 = 8 MiB) stay in cache, which on a CPU is several times faster
    than gathering the whole batch's candidates into memory and reading them back.
    """
    num_queries, num_slots = rows.shape
    num_rows = vectors.shape[0]
    k = min(k, num_slots)
    pad = -num_queries % queries_per_step
    if pad:  # padded queries have no valid candidates; their results are sliced off below
        queries = jnp.pad(queries, ((0, pad), (0, 0)))
        rows, valid = jnp.pad(rows, ((0, pad), (0, 0))), jnp.pad(valid, ((0, pad), (0, 0)))

    def step(block):
        q, r, ok = block  # [step, dim], [step, slots], [step, slots]
        # Sorting puts a row's copies (one per table that found it) side by side and the invalid slots
        # (num_rows) last; ascending rows also make the gather below walk memory forwards.
        keys = jnp.sort(jnp.where(ok, r, num_rows), axis=-1)
        repeat = jnp.concatenate([jnp.zeros_like(keys[:, :1], bool), keys[:, 1:] == keys[:, :-1]], axis=-1)
        keep = (keys < num_rows) & ~repeat
        gathered = vectors[jnp.minimum(keys, num_rows - 1)]  # [step, slots, dim]
        scores = jnp.einsum("qcd,qd->qc", gathered, q, preferred_element_type=jnp.float32)
        top, where = jax.lax.top_k(jnp.where(keep, scores, -jnp.inf), k)  # ties: the lower row
        return top, jnp.take_along_axis(keys, where, axis=-1)

    split = lambda a: a.reshape(-1, queries_per_step, *a.shape[1:])
    top, top_rows = jax.lax.map(step, (split(queries), split(rows), split(valid)))
    return top.reshape(-1, k)[:num_queries], top_rows.reshape(-1, k)[:num_queries]


def search_reference(
    queries: np.ndarray, vectors: np.ndarray, planes: np.ndarray, config: LSHConfig, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The slow path the tests trust: dict buckets, Python loops, the same probes and budget rule, float64 scores.

    `vectors` and `queries` are unit rows. Missing results are score -inf, row -1.
    """

    def projections(x):
        return (np.asarray(x, np.float32) @ planes).reshape(len(x), config.num_tables, config.num_bits)

    def code(bits):
        return int(sum(1 << b for b in range(config.num_bits) if bits[b]))

    vector_proj = projections(vectors)
    buckets = [{} for _ in range(config.num_tables)]
    for row in range(len(vectors)):
        for table in range(config.num_tables):
            buckets[table].setdefault(code(vector_proj[row, table] > 0), []).append(row)
    scores_out = np.full((len(queries), k), -np.inf)
    rows_out = np.full((len(queries), k), -1)
    for qi, proj in enumerate(projections(queries)):
        found = set()
        for table in range(config.num_tables):
            own = code(proj[table] > 0)
            shakiest = np.argsort(np.abs(proj[table]), kind="stable")[: config.num_probes - 1]
            members = [r for c in [own, *(own ^ (1 << int(b)) for b in shakiest)] for r in buckets[table].get(c, [])]
            found.update(members[: config.max_candidates_per_table])
        rows = np.array(sorted(found), dtype=np.int64)
        scores = np.asarray(vectors, np.float64)[rows] @ np.asarray(queries[qi], np.float64)
        best = np.lexsort((rows, -scores))[:k]
        scores_out[qi, : len(best)], rows_out[qi, : len(best)] = scores[best], rows[best]
    return scores_out, rows_out
