"""Clustered synthetic embeddings: a seeded Gaussian mixture on the unit sphere.

Purely random Gaussian vectors have no neighbour structure in high dimension
(every pair is nearly orthogonal, the "nearest" neighbours barely nearer than
the rest), so they say nothing about approximate search. Real embeddings come
in topics. Here each vector is `normalize(center + spread * noise / sqrt(dim))`
with a uniformly chosen center among `n // points_per_center` random unit
centers, so the noise has norm ~spread. With the defaults (spread 0.5, ~100
points per center) a vector's cosine with members of its own cluster is ~0.8
and with everything else ~0; a query's 10th nearest neighbour sits at ~0.83,
only a little above the rest of its cluster, so a method must find most of the
right cluster, not just its centre, to reach high recall.

Queries are fresh draws from the same mixture (not copies of stored vectors).
"""

import numpy as np


def clustered_vectors(
    n: int,
    dim: int,
    *,
    num_queries: int = 0,
    points_per_center: int = 100,
    spread: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(database [n, dim], queries [num_queries, dim]) float32 unit rows from one seed."""
    rng = np.random.default_rng(seed)
    num_centers = max(1, n // points_per_center)
    centers = rng.standard_normal((num_centers, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def draw(count):
        out = np.empty((count, dim), np.float32)
        for first in range(0, count, 1 << 16):  # blocks keep the float temporaries small at n = 1M
            size = min(1 << 16, count - first)
            x = centers[rng.integers(0, num_centers, size)]
            x += (spread / np.sqrt(dim)) * rng.standard_normal((size, dim), dtype=np.float32)
            out[first : first + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(num_queries)
