"""T5's bucketed relative position bias (Raffel et al., 2020).

Instead of adding positions to the embeddings, each head learns one scalar per
*bucket* of key-minus-query offset and adds it to the attention logits. Small
offsets get a bucket each; larger ones share logarithmically wider buckets up to
`max_distance`, beyond which all offsets share the last bucket. One table per
stack is shared by all its layers.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def relative_position_bucket(relative, *, bidirectional: bool, num_buckets: int, max_distance: int):
    """relative = key_position - query_position (int array) -> bucket ids in [0, num_buckets).

    bidirectional: the first half of the buckets is for keys at or before the
    query, the second for keys after it. Otherwise (causal decoders) keys after
    the query all land in bucket 0 (they are masked anyway).
    """
    relative = jnp.asarray(relative, jnp.int32)
    bucket = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = jnp.where(relative > 0, num_buckets, 0)
        distance = jnp.abs(relative)
    else:
        distance = jnp.maximum(-relative, 0)
    exact = num_buckets // 2  # distances below this get their own bucket
    # log-spaced buckets for exact <= distance < max_distance; float32 like the reference implementation, so
    # bucket boundaries land on the same integers.
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = exact + (scaled * (num_buckets - exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(distance < exact, distance, large)


def relative_position_bias_reference(query_positions, key_positions, table, *, bidirectional, max_distance):
    """Slow reference: a Python loop over (query, key) pairs, for tests. Positions are 1-d lists; -> [heads, q, k]."""
    num_buckets, heads = table.shape
    out = [[[0.0] * len(key_positions) for _ in query_positions] for _ in range(heads)]
    for i, q in enumerate(query_positions):
        for j, k in enumerate(key_positions):
            n, offset = num_buckets, 0
            rel = k - q
            if bidirectional:
                n //= 2
                offset = n if rel > 0 else 0
                dist = abs(rel)
            else:
                dist = max(-rel, 0)
            exact = n // 2
            if dist < exact:
                b = dist
            else:
                # float32, like the fast path: at some distances float64 would round to the next bucket.
                scaled = np.log(np.float32(dist) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
                b = min(n - 1, exact + int(scaled * np.float32(n - exact)))
            for h in range(heads):
                out[h][i][j] = float(table[offset + b, h])
    return out


class RelativePositionBias(nn.Module):
    """(query positions [b|1, q], key positions [b|1, k]) -> additive logits bias [b|1, heads, q, k], float32."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, query_positions, key_positions):
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (None, "heads"))
        table = self.param("embedding", init, (self.num_buckets, self.num_heads), self.param_dtype)
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
        buckets = relative_position_bucket(
            relative, bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [b, q, k, heads]
        return bias.transpose(0, 3, 1, 2)  # [b, heads, q, k]
