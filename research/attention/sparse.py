"""Sparse attention: each query sees a fixed subset of keys, computed without the [n, n] matrix.

  sliding       local window (Longformer's local part, Mistral's SWA)      O(n * window)
  block_sparse  neighbouring blocks + global blocks (BigBird without its     O(n * (3 + num_global) * block)
                random blocks; Longformer-style global tokens)
  strided       own chunk + the last key of every chunk (Sparse Transformer  O(n * (stride + n / stride))
                "fixed" pattern, Child et al. 2019)

All three are exact: they equal `dense_attention` with the mask `*_mask` below
builds (tests check outputs and gradients). Queries are cut into blocks and
each block gathers only the keys it may see, so no [n, n] array exists. All
need q_len == kv_len (self-attention) and a block/window/stride dividing the
length; explicit masks are not supported (use dense or blockwise). Segment ids
and MHA/GQA/MQA are.
"""

import jax
import jax.numpy as jnp

from research.attention.blockwise import allowed_mask, block_len, check_heads, split_segment_ids
from research.attention.dense import _MASK_VALUE, dense_attention
from research.attention.registry import register_attention

# --- Equivalent masks: the references. [q_len, kv_len] bool, True = may attend. ---


def sliding_pattern(i, j, *, window: int, causal: bool = True):
    """Query position i may see key position j. Causal: i - window < j (j <= i is the causal mask's).
    Non-causal: |i - j| < window."""
    return (i - j < window) if causal else jnp.abs(i - j) < window


def block_sparse_pattern(i, j, *, block_size: int, num_global: int, causal: bool = True):
    """Blocks qb, kb (index // block_size) attend when either is global (< num_global) or |qb - kb| <= 1."""
    del causal  # the same pattern either way; causality is the causal mask's
    qb, kb = i // block_size, j // block_size
    return (qb < num_global) | (kb < num_global) | (jnp.abs(qb - kb) <= 1)


def strided_pattern(i, j, *, stride: int, causal: bool = True):
    """Same stride-long chunk, or j is the last key of its chunk (a "summary" every query sees)."""
    del causal
    return (i // stride == j // stride) | (j % stride == stride - 1)


def _pattern_mask(pattern, length: int, causal: bool, **options):
    i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    out = pattern(i, j, causal=causal, **options)
    return out & (j <= i) if causal else out


def sliding_mask(length: int, window: int, *, causal: bool):
    """The dense-equivalent [length, length] mask of "sliding" (the tests' reference)."""
    return _pattern_mask(sliding_pattern, length, causal, window=window)


def block_sparse_mask(length: int, block_size: int, num_global: int, *, causal: bool):
    """The dense-equivalent [length, length] mask of "block_sparse"."""
    return _pattern_mask(block_sparse_pattern, length, causal, block_size=block_size, num_global=num_global)


def strided_mask(length: int, stride: int, *, causal: bool):
    """The dense-equivalent [length, length] mask of "strided"."""
    return _pattern_mask(strided_pattern, length, causal, stride=stride)


# --- Shared machinery. ---


def _check(q, k, v, mask, name):
    check_heads(q, k, v, name)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{name} attention is self-attention: q_len={q.shape[1]} must equal kv_len={k.shape[1]}")
    if mask is not None:
        raise ValueError(f"{name} attention takes causal and segment_ids, not an explicit mask (dense/blockwise do)")


def _neighbours(x, offsets, fill=0):
    """x: [b, nb, B, ...] -> [b, nb, len(offsets) * B, ...]: block i gathers blocks i + o (fill outside)."""
    nb = x.shape[1]
    parts = []
    for o in offsets:
        if o == 0:
            parts.append(x)
            continue
        pad = [(0, 0)] * x.ndim
        pad[1] = (max(-o, 0), max(o, 0))
        shifted = jnp.pad(x, pad, constant_values=fill)  # block i of the result is block i + o of x
        parts.append(shifted[:, max(o, 0) : max(o, 0) + nb])
    return jnp.concatenate(parts, axis=2)


def _neighbour_positions(nb, block, offsets):
    """[nb, len(offsets) * block] key positions the blocks gather, -1 where outside the sequence."""
    i = jnp.arange(nb)[:, None, None]
    o = jnp.asarray(offsets)[None, :, None]
    pos = (i + o) * block + jnp.arange(block)[None, None, :]
    return jnp.where((i + o >= 0) & (i + o < nb), pos, -1).reshape(nb, -1)


def _attend_parts(q, parts):
    """One softmax over several key sets per query block.

    q: [b, nb, B, heads, d]. parts: (k, v, allowed) with k, v either per block [b, nb, K, kvh, d]
    or shared by every block [b, K, kvh, d]; allowed: bool broadcastable to [b, nb, B, K].
    Returns [b, nb, B, heads, d]. kv heads are shared by their query group, never repeated.
    """
    b, nb, blk, heads, d = q.shape
    kv_heads = parts[0][0].shape[-2]
    groups = heads // kv_heads
    qh = (q * jnp.asarray(d**-0.5, q.dtype)).reshape(b, nb, blk, kv_heads, groups, d)  # [b, nb, B, kvh, g, d]
    logits = []
    for k, _, allowed in parts:
        spec = "bnqhgd,bnkhd->bnhgqk" if k.ndim == 5 else "bnqhgd,bkhd->bnhgqk"
        s = jnp.einsum(spec, qh, k, preferred_element_type=jnp.float32)  # [b, nb, kvh, g, B, K]
        logits.append(jnp.where(allowed[:, :, None, None], s, _MASK_VALUE))
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    out, start = 0.0, 0
    for k, v, _ in parts:
        p = probs[..., start : start + k.shape[-3]].astype(v.dtype)
        start += k.shape[-3]
        spec = "bnhgqk,bnkhd->bnqhgd" if v.ndim == 5 else "bnhgqk,bkhd->bnqhgd"
        out = out + jnp.einsum(spec, p, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).reshape(b, nb, blk, heads, d)


def _seg_blocks(seg, nb, block):
    return None if seg is None else seg.reshape(seg.shape[0], nb, block)  # [b, nb, B]


def _allowed(q_pos, k_pos, q_seg, k_seg, extra):
    """allowed_mask(...) & extra, shaped [b|1, nb, B, K]."""
    segs = allowed_mask(q_pos, k_pos, q_seg, k_seg, causal=False)
    out = extra if segs is None else segs & extra
    return out if out.ndim == 4 else out[None]


# --- The variants. ---


@register_attention("sliding", options=("window",), decode_mask=sliding_pattern)
def sliding_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, window=128):
    """Local attention: causal, each query sees the `window` most recent keys (itself included);
    non-causal, keys within `window - 1` positions either side.

    Blocks of `window` queries attend to their own and previous key block (and the next, non-causal):
    O(n * 2 window) time and memory (3 window non-causal). window (clamped to the length) must divide
    the length. No information travels further than window per layer: it cannot recall a distant key.
    """
    _check(q, k, v, mask, "sliding")
    n = q.shape[1]
    blk = block_len(n, window, "window", "sequence length", "sliding")
    nb = n // blk
    offsets = (-1, 0) if causal else (-1, 0, 1)
    b, kvh = q.shape[0], k.shape[2]
    kb = _neighbours(k.reshape(b, nb, blk, kvh, -1), offsets)  # [b, nb, K, kvh, d]
    vb = _neighbours(v.reshape(b, nb, blk, kvh, -1), offsets)
    q_pos = jnp.arange(n).reshape(nb, blk)  # [nb, B]
    k_pos = _neighbour_positions(nb, blk, offsets)  # [nb, K]
    dist = q_pos[:, :, None] - k_pos[:, None, :]
    near = (dist >= 0) & (dist < window) if causal else jnp.abs(dist) < window
    near &= k_pos[:, None, :] >= 0
    q_seg, kv_seg = split_segment_ids(segment_ids, n, n)
    k_seg = None if kv_seg is None else _neighbours(_seg_blocks(kv_seg, nb, blk), offsets)
    allowed = _allowed(q_pos, k_pos, _seg_blocks(q_seg, nb, blk), k_seg, near)
    out = _attend_parts(q.reshape(b, nb, blk, q.shape[2], -1), [(kb, vb, allowed)])
    return out.reshape(q.shape)


@register_attention("block_sparse", options=("block_size", "num_global"), decode_mask=block_sparse_pattern)
def block_sparse_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, block_size=128, num_global=1):
    """BigBird/Longformer-style: each query block sees its neighbouring blocks (i-1, i, i+1; causal:
    i-1, i) and the first `num_global` blocks; global blocks' queries see every key.

    Cost O(n * (3 + num_global) * block_size) plus O(num_global * block_size * n) for the global
    rows: linear in n. BigBird's random blocks are left out (they need a per-layer random
    pattern; the window + global part is what gives the long-range path). block_size (clamped
    to the length) must divide it; num_global may be 0 (block-local attention only).
    """
    _check(q, k, v, mask, "block_sparse")
    if num_global < 0:
        raise ValueError(f"block_sparse attention: num_global={num_global} must be >= 0")
    b, n, heads, d = q.shape
    kvh = k.shape[2]
    blk = block_len(n, block_size, "block_size", "sequence length", "block_sparse")
    nb = n // blk
    ng = min(num_global, nb)
    glen = ng * blk
    q_seg, kv_seg = split_segment_ids(segment_ids, n, n)
    outs = []
    if ng:  # global rows: every key, exactly as dense
        segs = None if q_seg is None else (q_seg[:, :glen], kv_seg)
        outs.append(dense_attention(q[:, :glen], k, v, causal=causal, segment_ids=segs))
    if ng < nb:  # the other rows: neighbours + global keys
        offsets = (-1, 0) if causal else (-1, 0, 1)
        q_pos = jnp.arange(n).reshape(nb, blk)[ng:]  # [nl, B]
        k_pos = _neighbour_positions(nb, blk, offsets)[ng:]  # [nl, K]
        # Neighbour keys inside the global blocks are already in the global part: mask them here.
        near = (k_pos >= glen)[:, None, :]
        if causal:
            near = near & (k_pos[:, None, :] <= q_pos[:, :, None])
        local_seg = None if kv_seg is None else _neighbours(_seg_blocks(kv_seg, nb, blk), offsets)[:, ng:]
        q_seg_l = None if q_seg is None else _seg_blocks(q_seg, nb, blk)[:, ng:]
        kb = _neighbours(k.reshape(b, nb, blk, kvh, d), offsets)[:, ng:]  # [b, nl, K, kvh, d]
        vb = _neighbours(v.reshape(b, nb, blk, kvh, d), offsets)[:, ng:]
        parts = [(kb, vb, _allowed(q_pos, k_pos, q_seg_l, local_seg, near))]
        if ng:  # global keys precede every local query: causal never hides them
            g_pos = jnp.arange(glen)
            g_seg = None if kv_seg is None else kv_seg[:, None, :glen]  # [b, 1, G]
            everywhere = jnp.ones((1, 1, glen), bool)
            parts.append((k[:, :glen], v[:, :glen], _allowed(q_pos, g_pos[None], q_seg_l, g_seg, everywhere)))
        outs.append(_attend_parts(q[:, glen:].reshape(b, nb - ng, blk, heads, d), parts).reshape(b, -1, heads, d))
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


@register_attention("strided", options=("stride",), decode_mask=strided_pattern)
def strided_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, stride=64):
    """Sparse Transformer's fixed pattern: a query sees its own `stride`-long chunk and the last key
    of every chunk (the chunk's "summary"), so two layers connect any two positions.

    Cost O(n * (stride + n / stride)): O(n^1.5) at stride ~ sqrt(n); at a fixed stride the summary
    part is 1/stride of dense, so time still grows ~n^2 for n >> stride^2. stride (clamped to the
    length) must divide the length.
    """
    _check(q, k, v, mask, "strided")
    b, n, heads, d = q.shape
    kvh = k.shape[2]
    s = block_len(n, stride, "stride", "sequence length", "strided")
    nc = n // s
    q_pos = jnp.arange(n).reshape(nc, s)  # [nc, s]
    q_seg, kv_seg = split_segment_ids(segment_ids, n, n)
    q_seg_c, k_seg_c = _seg_blocks(q_seg, nc, s), _seg_blocks(kv_seg, nc, s)
    own = jnp.ones((nc, s, s), bool)
    if causal:
        own = own & (q_pos[:, None, :] <= q_pos[:, :, None])
    local = (k.reshape(b, nc, s, kvh, d), v.reshape(b, nc, s, kvh, d), _allowed(q_pos, q_pos, q_seg_c, k_seg_c, own))
    # Summary keys of other chunks (the own chunk's is in `local`); causal: earlier chunks only.
    chunk = jnp.arange(nc)
    other = (chunk[None, :] < chunk[:, None]) if causal else (chunk[None, :] != chunk[:, None])  # [nc(q), nc(k)]
    sum_pos = chunk * s + s - 1  # [nc]
    sum_seg = None if kv_seg is None else kv_seg[:, None, s - 1 :: s]  # [b, 1, nc]
    summary = (
        k[:, s - 1 :: s],
        v[:, s - 1 :: s],
        _allowed(q_pos, sum_pos[None], q_seg_c, sum_seg, jnp.broadcast_to(other[:, None, :], (nc, s, nc))),
    )
    return _attend_parts(q.reshape(b, nc, s, heads, d), [local, summary]).reshape(q.shape)


# --- Config-time checks (research.config.validate calls this before anything compiles). ---

# Options that must divide the sequence length (or be >= it), per variant.
_DIVIDES = {
    "blockwise": ("block_size",),
    "sliding": ("window",),
    "block_sparse": ("block_size",),
    "strided": ("stride",),
    "linformer": ("rank",),
    "performer": ("block_size",),
    "flash": ("block_q", "block_kv"),
}
# Numeric options that may be 0; every other must be > 0, whichever variant runs (a sweep over
# model.attention shares the options).
_NON_NEGATIVE = ("num_global",)


def check_attention_options(name: str, options, seq_len: int) -> None:
    """Raises ValueError naming `model.attention_options.<key>` when an option is out of range, or
    variant `name` can't run at seq_len."""
    for key, value in options.items():
        least = 0 if key in _NON_NEGATIVE else 1
        if not isinstance(value, bool) and value < least:
            raise ValueError(f"model.attention_options.{key}={value} must be {'>= 0' if least == 0 else '> 0'}")
    for key in _DIVIDES.get(name, ()):
        if seq_len % min(options[key], seq_len):
            raise ValueError(
                f"model.attention_options.{key}={options[key]} must divide data.seq_len={seq_len} (or be >= it)"
                f" for attention {name!r}"
            )
