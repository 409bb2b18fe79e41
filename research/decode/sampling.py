"""Samplers: logits [batch, vocab] -> token ids [batch]. Pure functions, jit-friendly."""

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


def sample_logits(rng, logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """temperature 0 is greedy; otherwise top-k, then top-p, then a categorical draw."""
    logits = logits.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
