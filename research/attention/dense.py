"""Dense softmax attention: the reference every other variant is tested against."""

import jax
import jax.numpy as jnp

from research.attention.registry import register_attention

# Large but finite: a fully masked row (a padding query) then gets a uniform,
# finite distribution instead of NaNs that would leak into gradients.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_attention_mask(q_len, kv_len, *, causal=False, segment_ids=None, mask=None):
    """Combines causal, segment and explicit masks into one boolean mask.

    Returns None (attend everywhere) or a bool array broadcastable to
    [batch, heads, q_len, kv_len].
    """
    out = None

    def conj(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if causal:
        q_idx = jnp.arange(q_len)[:, None]
        kv_idx = jnp.arange(kv_len)[None, :]
        out = conj(out, (kv_idx <= q_idx)[None, None])  # [1, 1, q, kv]
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        same = q_seg[:, :, None] == kv_seg[:, None, :]  # [b, q, kv]
        out = conj(out, jnp.logical_and(same, kv_seg[:, None, :] != 0)[:, None])
    if mask is not None:
        out = conj(out, mask)
    return out


@register_attention("dense")
def dense_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, bias=None):
    """softmax(q k^T / sqrt(d) + bias) v with the logits materialised: O(q_len * kv_len) memory.

    bias: optional float, broadcastable to [batch, heads, q_len, kv_len] (e.g. T5 relative positions).
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    groups = heads // kv_heads
    # Heads-major layout and plain batched matmuls: on CPU this runs about twice as
    # fast as the equivalent 5-d einsum, and the g query heads sharing a kv head
    # become one taller matmul instead of g small ones.
    qh = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)  # [b, kvh, g, q, d]
    qh = qh.reshape(batch, kv_heads, groups * q_len, head_dim)
    kh = k.transpose(0, 2, 3, 1)  # [b, kvh, d, kv]
    vh = v.transpose(0, 2, 1, 3)  # [b, kvh, kv, d]
    # Logits and softmax in float32 whatever the activation dtype: bf16
    # softmax over long rows loses the small probabilities.
    logits = jnp.matmul(qh * jnp.asarray(head_dim**-0.5, q.dtype), kh, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + _bias_layout(bias, kv_heads, groups)
    m = make_attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids, mask=mask)
    if m is not None:
        # m: [b|1, h|1, q, kv] -> [b|1, kvh|1, g*q, kv], the logits' layout (4-d keeps XLA's CPU loops simple).
        if m.shape[1] == 1:
            m = jnp.tile(m, (1, 1, groups, 1)) if groups > 1 else m
        else:
            m = m.reshape(m.shape[0], kv_heads, groups * q_len, kv_len)
        logits = jnp.where(m, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.matmul(probs, vh)  # [b, kvh, g*q, d]
    out = out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)  # [b, q, kvh, g, d]
    return out.reshape(batch, q_len, heads, head_dim)


def _bias_layout(bias, kv_heads, groups):
    """[b|1, h|1, q, kv] -> [b|1, kvh|1, g*q, kv] float32: the logits' heads-major layout."""
    bias = jnp.asarray(bias, jnp.float32)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    b, h, q_len, kv_len = bias.shape
    if h == 1:
        return jnp.tile(bias, (1, 1, groups, 1)) if groups > 1 else bias
    return bias.reshape(b, kv_heads, groups * q_len, kv_len)  # head = kv_head * groups + g


def cached_attention(q, k_cache, v_cache, mask, bias=None):
    """Attention of a few new queries against a KV cache kept heads-major.

    q: [batch, q_len, heads, head_dim]; k_cache, v_cache: [batch, kv_heads, cache_len, head_dim];
    mask: bool, broadcastable to [batch, 1, q_len, cache_len]. The same maths as
    `dense_attention`, but the cache is never transposed: decoding is memory-bound,
    and a per-step copy of the whole cache would dominate its cost.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads, _cache_len = k_cache.shape[1], k_cache.shape[2]
    groups = heads // kv_heads
    qh = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    qh = qh.reshape(batch, kv_heads, groups * q_len, head_dim) * jnp.asarray(head_dim**-0.5, q.dtype)
    logits = jnp.einsum("bkqd,bktd->bkqt", qh, k_cache, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + _bias_layout(bias, kv_heads, groups)
    mask = jnp.tile(mask, (1, 1, groups, 1)) if groups > 1 else mask  # [b, 1, g*q, cache]
    logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkqt,bktd->bkqd", probs, v_cache)  # [b, kvh, g*q, d]
    out = out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, heads, head_dim)
