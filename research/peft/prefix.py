"""Prefix tuning: every attention layer gets P learned key/value rows that every query attends to.

The prefixes are a tree mirroring the model's attention modules, e.g.
prefix["block_0"]["attn"] = {"key": [P, kv_heads, head_dim], "value": ...},
passed to `model.apply` as the variable collection "prefix". An `Attention`
module that finds "prefix/key" in its scope wraps its attention function with
`with_prefix` (or `with_prefix_cached` when decoding), so no model code is
forked and the base parameters are untouched.

The prefix keys enter after RoPE: they have no position, and every query sees
them whatever its own position or packed segment (padding queries too, whose
outputs nobody reads). Attention variants must take an explicit `mask`: the
prefix columns break the `kv_idx <= q_idx` causal layout of fused kernels.
"""

import jax
import jax.numpy as jnp

from research.attention import make_attention_mask
from research.peft.common import find_modules, nest

COLLECTION = "prefix"


def init_prefix(model, init_inputs: dict, *, prefix_len: int, rng) -> dict:
    """Prefixes for every Attention module `model` calls (a shape-only trace finds them).

    Keys start N(0, 1), the scale of the projected keys of RMS-normalised inputs
    under fan-in init, and distinct per slot so the slots learn different things;
    values start at 0, so a fresh prefix only takes some attention mass (it
    shrinks the layer's output) instead of writing random vectors into the
    residual stream, which a pretrained model recovers from slowly.
    """
    from research.layers import Attention  # here: research.layers imports this module

    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 1:
        raise ValueError(f"peft.prefix_len={prefix_len!r} must be an int >= 1")
    out = {}
    for i, (path, (module, _)) in enumerate(sorted(find_modules(model, init_inputs, (Attention,)).items())):
        shape = (prefix_len, module.num_kv_heads, module.head_dim)
        out[path] = {"key": jax.random.normal(jax.random.fold_in(rng, i), shape), "value": jnp.zeros(shape)}
    return nest(out)


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


def prefix_variables(prefix) -> dict:
    """The extra variable collection for model.apply."""
    return {COLLECTION: prefix}
