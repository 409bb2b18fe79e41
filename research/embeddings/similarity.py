"""Cosine similarity and exact top-k search over a store of embedding vectors.

Cosine similarity is the dot product of unit vectors, so every search here
normalizes once and then ranks by dot product. A zero vector has no direction:
we define its cosine similarity with anything (itself included) as 0, which is
what `normalize` mapping it to the zero vector gives for free.

Exact search never builds the full [queries, database] score matrix: it scans
the database in fixed-size chunks of rows, keeps a running top-k per query and
merges each chunk's top-k into it, so peak memory is [queries, chunk_size]
scores however large the store is. Each chunk's top-k comes from
`grouped_top_k`, an exact two-stage selection (group maxima first) that beats
XLA's serial CPU top-k. Ties go to the lower row index (lax.top_k keeps the
earlier of equal values, and every merge puts earlier rows first), which is
what makes chunked, unchunked and sharded searches agree exactly.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK_SIZE = 4096  # rows per scan step: [1024 queries, 4096] float32 scores = 16 MiB

# (scores [q, n], k) -> (top scores [q, k], their columns [q, k]): grouped_top_k, lax.top_k or approx_max_k.
SelectTopK = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def normalize(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm in float32; zero rows stay zero.

    Dividing by the largest magnitude first keeps the squared norm from under-
    or overflowing float32, so the result is scale-invariant for any finite
    nonzero row (1e-30 * v and 1e30 * v normalize to the same vector).
    """
    x = jnp.asarray(x, jnp.float32)
    peak = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    x = x / jnp.where(peak > 0, peak, 1.0)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.where(norm > 0, norm, 1.0)


@jax.jit
def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, d] x [m, d] -> [n, m] cosine similarities in float32; 0 where either row is zero."""
    return jnp.dot(normalize(a), normalize(b).T, preferred_element_type=jnp.float32)


def grouped_top_k(scores: jax.Array, k: int, group_size: int = 32) -> tuple[jax.Array, jax.Array]:
    """lax.top_k over the last axis, same result (ties included), in roughly half the time on a CPU.

    XLA's CPU top-k walks each row serially. Here a vectorized max over contiguous groups of
    `group_size` columns comes first: the k largest values can only lie in the k groups with the
    largest maxima (a group outside them is beaten by k group maxima, each at least as large and, on
    a tie, in a lower group, i.e. at lower columns), so an exact top-k over those k * group_size
    columns, gathered in column order, finishes the job.
    """
    n = scores.shape[-1]
    if n % group_size or n // group_size < k:
        return jax.lax.top_k(scores, k)
    groups = scores.reshape(*scores.shape[:-1], n // group_size, group_size)  # [..., groups, group_size]
    _, best = jax.lax.top_k(jnp.max(groups, axis=-1), k)
    best = jnp.sort(best, axis=-1)  # column order, so ties still go to the lower column
    columns = (best[..., None] * group_size + jnp.arange(group_size)).reshape(*best.shape[:-1], -1)
    candidates = jnp.take_along_axis(groups, best[..., None], axis=-2).reshape(columns.shape)  # [..., k * group]
    top, where = jax.lax.top_k(candidates, k)
    return top, jnp.take_along_axis(columns, where, axis=-1)


def merge_top_k(
    scores_a: jax.Array, rows_a: jax.Array, scores_b: jax.Array, rows_b: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Top-k of two candidate lists ([q, ka] and [q, kb]); on ties list a wins, then the earlier position."""
    scores = jnp.concatenate([scores_a, scores_b], axis=-1)
    rows = jnp.concatenate([rows_a, rows_b], axis=-1)
    top, where = jax.lax.top_k(scores, k)
    return top, jnp.take_along_axis(rows, where, axis=-1)


def chunked_top_k_by_dot(
    queries: jax.Array,
    database: jax.Array,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_valid: jax.Array | int | None = None,
    select_top_k: SelectTopK = grouped_top_k,
) -> tuple[jax.Array, jax.Array]:
    """Top-k rows of `database` [n, d] by dot product with each query [q, d], scanning `chunk_size` rows at a time.

    Rows at index >= `num_valid` (padding, e.g. on the last shard) score -inf.
    Returns (scores [q, min(k, n)] float32 descending, row indices [q, min(k, n)] int32).
    Traceable: callers jit it (or run it inside shard_map).
    """
    n = database.shape[0]
    k = min(k, n)
    chunk = min(max(chunk_size, k), n)  # at least k rows, so the first chunk alone fills the running top-k
    num_full = n // chunk

    def chunk_top_k(block, first_row):
        scores = jnp.dot(queries, block.T, preferred_element_type=jnp.float32)  # [q, rows in block]
        rows = first_row + jnp.arange(block.shape[0], dtype=jnp.int32)
        if num_valid is not None:  # mask only chunks that reach the padding: masking them all costs ~15%
            mask = lambda s: jnp.where(rows < num_valid, s, -jnp.inf)
            scores = jax.lax.cond(first_row + block.shape[0] > num_valid, mask, lambda s: s, scores)
        top, where = select_top_k(scores, min(k, block.shape[0]))
        return top, rows[where]

    def step(carry, i):
        first_row = i * chunk
        block = jax.lax.dynamic_slice_in_dim(database, first_row, chunk)  # [chunk, d]
        return merge_top_k(*carry, *chunk_top_k(block, first_row), k), None

    carry = chunk_top_k(database[:chunk], 0)  # [q, k] each
    carry, _ = jax.lax.scan(step, carry, jnp.arange(1, num_full, dtype=jnp.int32))
    if num_full * chunk < n:  # the ragged tail: a static slice, so the store is never padded (copied)
        carry = merge_top_k(*carry, *chunk_top_k(database[num_full * chunk :], num_full * chunk), k)
    return carry


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def exact_search(
    queries: jax.Array, database: jax.Array, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[jax.Array, jax.Array]:
    """Exact cosine top-k: (scores [q, k] float32 descending, database row indices [q, k] int32)."""
    if k > database.shape[0]:
        raise ValueError(f"k={k} is larger than the database ({database.shape[0]} vectors)")
    return chunked_top_k_by_dot(normalize(queries), normalize(database), k, chunk_size=chunk_size)


def exact_search_reference(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The slow path the tests trust: the full score matrix in float64 numpy, a stable argsort, the first k."""

    def unit(x):
        x = np.asarray(x, np.float64)
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)

    scores = unit(queries) @ unit(database).T
    rows = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=-1), rows
