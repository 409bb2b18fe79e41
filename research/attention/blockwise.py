"""Blockwise exact attention: online softmax over key/value blocks, O(n) memory (the CPU fallback for flash).

The same function as `dense_attention`, computed the way flash attention does
it (Milner & Rabe 2021, "Self-attention does not need O(n^2) memory"; Dao et
al. 2022): queries are cut into blocks; for each query block a scan over the
key/value blocks keeps a running max `m`, normaliser `denom` and unnormalised
output `acc`, so only one [block, block] tile of logits exists at a time.

The query-block body is wrapped in `jax.checkpoint`: the backward pass keeps
only each query block's inputs and recomputes the block's tiles, so training
memory is O(n) too (plain autodiff through the inner scan would store every
tile, O(n^2)).

Also home of the small block helpers the sparse variants share.
"""

import jax
import jax.numpy as jnp
from jax import lax

from research.attention.dense import _MASK_VALUE
from research.attention.registry import register_attention


def check_heads(q, k, v, name: str) -> None:
    """q: [b, q_len, heads, d]; k, v: [b, kv_len, kv_heads, d] with kv_heads dividing heads."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"{name} attention wants q [batch, q_len, heads, head_dim] and k, v [batch, kv_len, kv_heads, head_dim],"
            f" got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv heads ({k.shape[2]})")


def block_len(length: int, size: int, option: str, what: str, name: str) -> int:
    """The block length for `length` tokens: `size`, or `length` itself when shorter; must divide `length`."""
    if size <= 0:
        raise ValueError(f"{name} attention: {option}={size} must be > 0")
    block = min(size, length)
    if length % block:
        raise ValueError(
            f"{name} attention: {option}={size} must divide {what}={length} (or be >= it);"
            f" pick a divisor of {length} or change data.seq_len"
        )
    return block


def split_segment_ids(segment_ids, q_len: int, kv_len: int):
    """None | [b, len] | (q_ids [b, q_len], kv_ids [b, kv_len]) -> (q_ids, kv_ids), both None when absent."""
    if segment_ids is None:
        return None, None
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
    if q_seg.shape[-1] != q_len or kv_seg.shape[-1] != kv_len:
        raise ValueError(f"segment ids {q_seg.shape}, {kv_seg.shape} don't match q_len={q_len}, kv_len={kv_len}")
    return q_seg, kv_seg


def allowed_mask(q_pos, k_pos, q_seg, k_seg, *, causal: bool):
    """Who may attend to whom, from positions and segment ids.

    q_pos: [..., Q]; k_pos: [..., K] ints (broadcastable leading axes); q_seg: [b, ..., Q] | None;
    k_seg: [b, ..., K] | None. Returns bool [..., Q, K] (with a leading b when segments are given).
    """
    out = None
    if causal:
        out = k_pos[..., None, :] <= q_pos[..., :, None]
    if q_seg is not None:
        same = (q_seg[..., :, None] == k_seg[..., None, :]) & (k_seg[..., None, :] != 0)
        out = same if out is None else out & same
    return out


def _explicit_mask_blocks(mask, batch, heads, kv_heads, q_len, kv_len, nq, bq):
    """An explicit mask, broadcastable to [b, heads, q, kv] -> per query block [nq, b|1, kvh|1, g|1, bq, kv]."""
    mask = jnp.asarray(mask, bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    mb, mh = mask.shape[0], mask.shape[1]
    if mb not in (1, batch) or mh not in (1, heads):
        raise ValueError(f"mask {mask.shape} is not broadcastable to [batch, heads, q_len, kv_len]")
    mask = jnp.broadcast_to(mask, (mb, mh, q_len, kv_len))
    if mh == heads:
        mask = mask.reshape(mb, kv_heads, heads // kv_heads, q_len, kv_len)  # [b|1, kvh, g, q, kv]
    else:
        mask = mask[:, :, None]  # [b|1, 1, 1, q, kv]
    mask = mask.reshape(*mask.shape[:3], nq, bq, kv_len)
    return jnp.moveaxis(mask, 3, 0)  # [nq, b|1, kvh|1, g|1, bq, kv]


@register_attention("blockwise", options=("block_size",))
def blockwise_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, block_size=128):
    """Exact attention in [block_size, block_size] tiles: dense's output without its [q_len, kv_len] logits.

    Cost: the same O(q_len * kv_len) FLOPs as dense (causal: about half, fully masked tiles are
    skipped with lax.cond); memory O((q_len + kv_len) * block_size) forward and backward.
    Supports causal/non-causal, segment ids, explicit masks, MHA/GQA/MQA (kv heads are shared
    through the einsum, never repeated). block_size (clamped to the length) must divide q_len
    and kv_len. A query that may attend to nothing (padding) gets an unspecified output.
    """
    check_heads(q, k, v, "blockwise")
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    bq = block_len(q_len, block_size, "block_size", "q_len", "blockwise")
    bk = block_len(kv_len, block_size, "block_size", "kv_len", "blockwise")
    nq, nk = q_len // bq, kv_len // bk
    q_seg, kv_seg = split_segment_ids(segment_ids, q_len, kv_len)

    qs = q * jnp.asarray(head_dim**-0.5, q.dtype)
    qb = qs.reshape(batch, nq, bq, kv_heads, groups, head_dim).transpose(1, 0, 3, 4, 2, 5)  # [nq, b, kvh, g, bq, d]
    kb = k.reshape(batch, nk, bk, kv_heads, head_dim).transpose(1, 0, 3, 2, 4)  # [nk, b, kvh, bk, d]
    vb = v.reshape(batch, nk, bk, kv_heads, head_dim).transpose(1, 0, 3, 2, 4)  # [nk, b, kvh, bk, d]
    ones = lambda n, blk: jnp.ones((n, batch, blk), jnp.int32)
    q_seg_b = ones(nq, bq) if q_seg is None else q_seg.reshape(batch, nq, bq).transpose(1, 0, 2)  # [nq, b, bq]
    kv_seg_b = ones(nk, bk) if kv_seg is None else kv_seg.reshape(batch, nk, bk).transpose(1, 0, 2)  # [nk, b, bk]
    mask_b = (
        jnp.zeros((nq,), bool)  # placeholder scanned alongside; unused
        if mask is None
        else _explicit_mask_blocks(mask, batch, heads, kv_heads, q_len, kv_len, nq, bq)
    )

    def q_block(_, xs):
        q_i, q_seg_i, i, mask_i = xs  # [b, kvh, g, bq, d], [b, bq], (), [b|1, kvh|1, g|1, bq, kv] | ()
        q_pos = i * bq + jnp.arange(bq)

        def kv_block(carry, ys):
            k_j, v_j, kv_seg_j, j = ys  # [b, kvh, bk, d] x2, [b, bk], ()

            def update(carry):
                m, denom, acc = carry  # [b, kvh, g, bq] x2, [b, kvh, g, bq, d]; float32
                s = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, preferred_element_type=jnp.float32)
                k_pos = j * bk + jnp.arange(bk)
                segs = (q_seg_i, kv_seg_j) if q_seg is not None else (None, None)
                allowed = allowed_mask(q_pos, k_pos, *segs, causal=causal)  # [b, bq, bk] | [bq, bk] | None
                if allowed is not None:
                    s = jnp.where(allowed[:, None, None] if allowed.ndim == 3 else allowed, s, _MASK_VALUE)
                if mask is not None:
                    s = jnp.where(lax.dynamic_slice_in_dim(mask_i, j * bk, bk, axis=-1), s, _MASK_VALUE)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                alpha = jnp.exp(m - m_new)  # rescales what was summed under the old max
                pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
                return m_new, alpha * denom + p.sum(-1), alpha[..., None] * acc + pv

            if causal:  # tiles entirely above the diagonal change nothing: skip their FLOPs
                carry = lax.cond(j * bk <= (i + 1) * bq - 1, update, lambda c: c, carry)
            else:
                carry = update(carry)
            return carry, None

        stats = jnp.full((batch, kv_heads, groups, bq), -jnp.inf, jnp.float32)
        init = (stats, jnp.zeros_like(stats), jnp.zeros((*stats.shape, head_dim), jnp.float32))
        (_, denom, acc), _ = lax.scan(kv_block, init, (kb, vb, kv_seg_b, jnp.arange(nk)))
        return None, (acc / denom[..., None]).astype(q.dtype)  # denom >= 1: the row max contributes exp(0)

    _, out = lax.scan(jax.checkpoint(q_block), None, (qb, q_seg_b, jnp.arange(nq), mask_b))
    # out: [nq, b, kvh, g, bq, d] -> [b, nq, bq, kvh, g, d]
    return out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, q_len, heads, head_dim)
