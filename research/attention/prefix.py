"""Learned prefix rows in front of the keys and values: the attention side of prefix tuning.

research/peft/prefix.py owns the trainable prefixes; these wrappers put them in
front of k and v for any attention function of this package's signature (and
for the heads-major KV cache), with every prefix column always visible. They
live here, below research.layers, so the Attention module can use them without
importing the PEFT package that builds on it.
"""

import jax.numpy as jnp

from research.attention.dense import make_attention_mask


def with_prefix(attend, key, value):
    """`attend` (the research.attention signature) with learned rows before k and v.

    key, value: [P, kv_heads, head_dim]. The causal/segment mask of the real
    keys is built here and the prefix columns are always visible; the wrapped
    function is then called with causal=False and that explicit mask.
    """

    def wrapped(q, k, v, *, causal=False, segment_ids=None, mask=None, **kwargs):
        batch, q_len = q.shape[:2]
        kv_len, p = k.shape[1], key.shape[0]
        pk = jnp.broadcast_to(key.astype(k.dtype)[None], (batch, *key.shape))  # [b, P, kvh, hd]
        pv = jnp.broadcast_to(value.astype(v.dtype)[None], (batch, *value.shape))
        m = make_attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids, mask=mask)
        if m is None:
            m = jnp.ones((1, 1, q_len, kv_len), bool)
        m = jnp.concatenate([jnp.ones((*m.shape[:-1], p), bool), m], axis=-1)  # [b|1, h|1, q, P + kv]
        if kwargs.get("bias") is not None:  # an additive logits bias: none on the prefix columns
            bias = kwargs["bias"]
            kwargs["bias"] = jnp.concatenate([jnp.zeros((*bias.shape[:-1], p), bias.dtype), bias], axis=-1)
        k = jnp.concatenate([pk, k], axis=1)  # [b, P + kv, kvh, hd]
        v = jnp.concatenate([pv, v], axis=1)
        return attend(q, k, v, causal=False, segment_ids=None, mask=m, **kwargs)

    return wrapped


def with_prefix_cached(cached_attend, key, value):
    """`cached_attention(q, k_cache, v_cache, mask)` with the prefix before the heads-major cache."""

    def wrapped(q, k_cache, v_cache, mask, *args, **kwargs):
        batch, p = q.shape[0], key.shape[0]
        pk = jnp.broadcast_to(
            key.astype(k_cache.dtype).transpose(1, 0, 2)[None], (batch, key.shape[1], p, key.shape[2])
        )
        pv = jnp.broadcast_to(
            value.astype(v_cache.dtype).transpose(1, 0, 2)[None], (batch, value.shape[1], p, value.shape[2])
        )  # [b, kvh, P, hd]
        mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], p), bool), mask], axis=-1)  # [b, 1, q, P + cache]
        if kwargs.get("bias") is not None:
            bias = kwargs["bias"]
            kwargs["bias"] = jnp.concatenate([jnp.zeros((*bias.shape[:-1], p), bias.dtype), bias], axis=-1)
        k = jnp.concatenate([pk, k_cache], axis=2)
        v = jnp.concatenate([pv, v_cache], axis=2)
        return cached_attend(q, k, v, mask, *args, **kwargs)

    return wrapped
