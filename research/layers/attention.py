"""Multi-head attention block: projections, RoPE, KV cache; the math is looked up by name.

`num_kv_heads` picks the head layout: == num_heads is MHA, 1 is MQA, anything
in between that divides num_heads is GQA.
"""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.attention import cached_attention, get_attention, get_decode_mask
from research.attention.prefix import with_prefix, with_prefix_cached
from research.layers.position import apply_rope


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention: str = "dense"
    attention_options: tuple = ()  # ((name, value), ...); the variant binds those it declares
    use_rope: bool = True
    rope_theta: float = 10_000.0
    causal: bool = True  # False: bidirectional (encoders)
    use_bias: bool = False  # biases on the q/k/v/out projections (GPT-2, BERT)
    dtype: jax.typing.DTypeLike = None
    param_dtype: jax.typing.DTypeLike = "float32"

    def _einsum(self, eqn, x, shape, names, name, fan_in_axes):
        # Explicit kernels instead of nn.DenseGeneral, whose init sees a flattened
        # shape, which breaks the logical sharding constraint applied at init.
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes)
        kernel = self.param(name, nn.with_logical_partitioning(init, names), shape, self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = jnp.einsum(eqn, x, kernel)
        if self.use_bias:  # one bias per output unit: the kernel's non-contracted axes
            n_in = len(fan_in_axes) if isinstance(fan_in_axes, tuple) else 1
            init = nn.with_logical_partitioning(nn.initializers.zeros, names[n_in:])
            y = y + self.param(f"{name}_bias", init, shape[n_in:], self.param_dtype).astype(y.dtype)
        return y

    @nn.compact
    def __call__(self, x, positions, segment_ids=None, *, decode: bool = False, bias=None):
        """x: [batch, len, d_model]; positions, segment_ids: [batch, len] int.

        bias: optional additive logits bias broadcastable to [batch, heads, q_len, kv_len]
        (T5's relative positions); only attention variants with a `bias` argument take it.
        """
        d_model = x.shape[-1]
        hd = self.head_dim
        proj = "bld,dhk->blhk"
        q = self._einsum(proj, x, (d_model, self.num_heads, hd), ("embed", "heads", "head_dim"), "query", 0)
        kv_shape, kv_names = (d_model, self.num_kv_heads, hd), ("embed", "kv_heads", "head_dim")
        k = self._einsum(proj, x, kv_shape, kv_names, "key", 0)  # [b, len, kvh, hd]
        v = self._einsum(proj, x, kv_shape, kv_names, "value", 0)
        if self.use_rope:
            q = apply_rope(q, positions, theta=self.rope_theta)
            k = apply_rope(k, positions, theta=self.rope_theta)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))

        if decode:
            out = self._decode_attend(q, k, v, positions, segment_ids, bias)
        else:
            attend = get_attention(self.attention, dict(self.attention_options))
            extra = {}
            if bias is not None:
                if "bias" not in inspect.signature(attend).parameters:
                    raise ValueError(
                        f"model.attention={self.attention!r} takes no additive bias (relative positions); use 'dense'"
                    )
                extra["bias"] = bias
            if self.has_variable("prefix", "key"):  # prefix tuning: learned keys/values (research/attention/prefix.py)
                attend = with_prefix(attend, **self.variables["prefix"])
            out = attend(q, k, v, causal=self.causal, segment_ids=segment_ids, **extra)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
        return self._einsum(
            "blhk,hkd->bld", out, (self.num_heads, hd, d_model), ("heads", "head_dim", "embed"), "out", (0, 1)
        )

    def _decode_attend(self, q, k, v, positions, segment_ids, bias=None):
        """Autoregressive step(s) against a KV cache held in the "cache" collection.

        The first call (cache creation, e.g. under `init`) sizes the cache from
        the input length. Later calls write this chunk's keys/values at
        `cache_index` and attend to every filled slot at or before each query's
        slot. Prompts are left-padded by the caller, so slot order is time
        order for every row and padding slots carry segment id 0 and are never
        attended to. A sparse variant's pattern (sliding window, blocks,
        strides) is a function of token positions, which the cache keeps too.
        """
        batch, q_len = q.shape[:2]
        pattern = get_decode_mask(self.attention, dict(self.attention_options))  # raises if unsupported
        if segment_ids is None:
            segment_ids = jnp.ones((batch, q_len), jnp.int32)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads-major: [b, kvh, len, hd]
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cached_seg = self.variable("cache", "cached_segment_ids", jnp.zeros, segment_ids.shape, jnp.int32)
        cached_pos = self.variable("cache", "cached_positions", jnp.zeros, segment_ids.shape, jnp.int32)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        i = index.value
        if initialized:  # (the first, shape-only pass just creates the cache)
            cached_k.value = _write_slots(cached_k.value, k, i)
            cached_v.value = _write_slots(cached_v.value, v, i)
            cached_seg.value = _write_slots(cached_seg.value, segment_ids.astype(jnp.int32), i, axis=1)
            cached_pos.value = _write_slots(cached_pos.value, positions.astype(jnp.int32), i, axis=1)
            index.value = i + q_len
        cache_len = cached_k.value.shape[2]
        q_slot = i + jnp.arange(q_len)
        causal = jnp.arange(cache_len)[None, :] <= q_slot[:, None]  # [q, cache]
        seg = cached_seg.value
        mask = causal[None] & (segment_ids[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
        if pattern is not None:
            mask = mask & pattern(positions[:, :, None], cached_pos.value[:, None, :])  # [b, q, cache]
        attend = cached_attention
        if self.has_variable("prefix", "key"):  # prefix tuning: learned keys/values (research/attention/prefix.py)
            attend = with_prefix_cached(attend, **self.variables["prefix"])
        return attend(q, cached_k.value, cached_v.value, mask[:, None], bias=bias)


def _write_slots(cache, new, index, axis: int = 2):
    """`cache` with `new` written at slots index.. along `axis` (the cache's length axis).

    The update runs on the cache without its unit axes (batch 1, one kv head), the shape XLA's
    dots read it in. Updating the full-rank array instead makes XLA's CPU fusion duplicate the
    update at batch 1 (once for the attention dots, once for the loop carry) and copy the whole
    cache up to four times per layer and step (a fifth of the step, profiled); the sampler's loop
    carries the cache without unit axes too (research/decode/sampler.py), so the update is in place.
    """
    keep = [a for a in range(cache.ndim) if a == axis or cache.shape[a] != 1]
    start = tuple(index if a == axis else 0 for a in keep)
    update = new.astype(cache.dtype).reshape(tuple(new.shape[a] for a in keep))
    view = cache.reshape(tuple(cache.shape[a] for a in keep))
    return jax.lax.dynamic_update_slice(view, update, start).reshape(cache.shape)
