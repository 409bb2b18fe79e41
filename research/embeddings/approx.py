"""Approximate top-k with `jax.lax.approx_max_k` over the exact similarity scores.

The scores themselves are exact (the same chunked matmul as exact search);
only the selection of the k largest per chunk is approximate. On TPU,
approx_max_k reduces each row to bins with cheap elementwise maxima, sized so
that the expected recall meets `recall_target`, and skips the full sort. On
CPU and GPU, XLA lowers it to an exact sort-and-slice fallback (see
jax/_src/lax/ann.py), so there the results equal exact search and the speed is
whatever that fallback costs; the benchmark measures it anyway.

Each chunk's selection is told the true row count through
`reduction_input_size_override`, so the recall target accounts for the whole
store rather than one chunk.
"""

import functools

import jax

from research.embeddings.similarity import DEFAULT_CHUNK_SIZE, chunked_top_k_by_dot, normalize


def approx_top_k_selector(recall_target: float, total_rows: int = -1):
    """A `select_top_k(scores, k)` for chunked_top_k_by_dot built on approx_max_k."""
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"approx option recall_target={recall_target} must be in (0, 1]")

    def select(scores, k):
        return jax.lax.approx_max_k(scores, k, recall_target=recall_target, reduction_input_size_override=total_rows)

    return select


@functools.partial(jax.jit, static_argnames=("k", "recall_target", "chunk_size"))
def approx_search(
    queries: jax.Array,
    database: jax.Array,
    k: int,
    *,
    recall_target: float = 0.95,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[jax.Array, jax.Array]:
    """Cosine top-k with approximate selection: (scores [q, k] float32 descending, row indices [q, k] int32)."""
    if k > database.shape[0]:
        raise ValueError(f"k={k} is larger than the database ({database.shape[0]} vectors)")
    select = approx_top_k_selector(recall_target, database.shape[0])
    return chunked_top_k_by_dot(normalize(queries), normalize(database), k, chunk_size=chunk_size, select_top_k=select)
