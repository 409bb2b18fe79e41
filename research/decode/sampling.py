"""Logit filters for sampling: top-k and top-p (nucleus). Pure functions, jit-friendly."""

import jax
import jax.numpy as jnp

_NEG_INF = -1e30


def top_k_filter(logits, k: int):
    """Keeps the k largest logits per row (k <= 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, _NEG_INF, logits)


def top_p_filter(logits, p: float):
    """Nucleus filter: keeps the smallest set of tokens whose probability mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Mass strictly before each token < p  <=>  the token is needed to reach p.
    keep_sorted = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, _NEG_INF, logits)
