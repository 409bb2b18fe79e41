"""The in-batch-negative contrastive loss (InfoNCE) that trains an encoder as a retriever.

Row i of `queries` and row i of `passages` are a positive pair; every other
passage in the batch is a negative for query i (Karpukhin et al. 2020, DPR).
On unit vectors, with temperature T:

    loss_i = -log softmax_j(q_i . p_j / T)[i]

symmetric=True adds the passage-to-query direction (CLIP). `valid` [b] drops
padding rows both as queries and as negatives. Returns sums in the
loss-function convention of research.train.step: (loss sum, count,
{"accuracy": correct-top-1 count}).
"""

import jax.numpy as jnp
import optax

from research.embeddings.similarity import normalize


def in_batch_contrastive_loss(queries, passages, valid=None, *, temperature: float = 0.05, symmetric: bool = False):
    if queries.shape != passages.shape or queries.ndim != 2:
        raise ValueError(f"queries and passages must both be [batch, dim], got {queries.shape} and {passages.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = queries.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    q, p = normalize(queries.astype(jnp.float32)), normalize(passages.astype(jnp.float32))
    labels = jnp.arange(b)
    total, correct = 0.0, 0.0
    for scores in [q @ p.T, p @ q.T][: 2 if symmetric else 1]:
        scores = jnp.where(valid[None, :], scores / temperature, -jnp.inf)  # padding is nobody's negative
        losses = optax.softmax_cross_entropy_with_integer_labels(scores, labels)
        total += jnp.sum(jnp.where(valid, losses, 0.0))
        correct += jnp.sum(valid & (jnp.argmax(scores, axis=1) == labels))
    directions = 2.0 if symmetric else 1.0
    count = jnp.sum(valid).astype(jnp.float32) * directions
    return total, count, {"accuracy": correct}
