"""Flash attention for GPUs: Pallas kernels lowered through Triton.

One program per (batch, head, query tile) walks the key tiles with an online
softmax in float32; K/V stay in their [batch, len, kv_heads, head_dim] layout
(no transposes, no materialised GQA repeat: query head h reads kv head
h // group through the BlockSpec index map).

Performance choices (H100, bf16):
- Forward tile 128 x 128: two 128x128 MMAs per step keep the tensor cores fed;
  K/V tiles double-buffered (num_stages=2) fit shared memory for head_dim <= 128.
  num_warps=8 at head_dim 128 (the 128x128 f32 accumulator is 64 registers per
  thread at 256 threads), 4 at head_dim <= 64.
- Causal attention walks only the key tiles at or below the diagonal, and
  applies the mask only on the diagonal tiles (two loops: unmasked, masked).
- exp2 with log2(e) folded into the softmax scale (one FMA per logit).
- Backward: a dq kernel (per query tile, over key tiles) and a dk/dv kernel
  (per key tile, over the group's query heads and query tiles) that both
  recompute p from the saved log-sum-exp, so there are no atomics and dk/dv
  come out already summed over the GQA group. The dk/dv kernel works keys-major
  (s^T = k q^T) so no matmul operand needs a register transpose. Smaller tiles (64 x 64 default):
  the dk/dv kernel keeps two f32 accumulators plus K and V in registers.
- Triton needs power-of-two tiles and head dims (16..256); anything else is a
  ValueError before tracing.
- Float32 inputs use Triton's default (TF32) matmuls, as XLA's default
  precision does on Ampere and later.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from research_kernels.flash_attention.common import (
    LOG2E,
    MASK_VALUE,
    Config,
    causal_kv_blocks,
    causal_q_blocks,
    check_inputs,
    fit_block,
    make_flash_attention,
    normalize_segment_ids,
)

HEAD_DIMS = (16, 32, 64, 128, 256)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _dot(a, b, dims=None):
    """Matmul in the inputs' dtype with a float32 accumulator."""
    if dims is None:
        return jnp.dot(a, b, preferred_element_type=jnp.float32)
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _visible(q_start, kv_start, bq, bkv, causal, q_ids, kv_ids, keys_major=False):
    """Which (query, key) pairs of this tile may attend: [bq, bkv] bool, or [bkv, bq] if keys_major."""
    shape, q_axis = ((bkv, bq), 1) if keys_major else ((bq, bkv), 0)
    ok = None
    if causal:
        q_pos = q_start + lax.broadcasted_iota(jnp.int32, shape, q_axis)
        kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, shape, 1 - q_axis)
        ok = kv_pos <= q_pos
    if q_ids is not None:
        if keys_major:
            same = (kv_ids[:, None] == q_ids[None, :]) & (kv_ids[:, None] != 0)
        else:
            same = (q_ids[:, None] == kv_ids[None, :]) & (kv_ids[None, :] != 0)
        ok = same if ok is None else ok & same
    return ok


def _split_refs(refs, n_in, has_segments):
    """(inputs, q_ids_ref, kv_ids_ref, outputs): segment-id refs come last among the inputs when present."""
    ins = refs[:n_in]
    if has_segments:
        return ins, refs[n_in], refs[n_in + 1], refs[n_in + 2 :]
    return ins, None, None, refs[n_in:]


def _kv_loop_bounds(q_start, bq, bkv, num_kv_blocks, causal, has_segments):
    """(unmasked tiles [0, n_full), masked tiles [n_full, n_visible)) for one query tile."""
    if causal:
        full, visible = causal_kv_blocks(q_start, bq, bkv, num_kv_blocks)
    else:
        full, visible = num_kv_blocks, num_kv_blocks
    if has_segments:
        full = 0
    return full, visible


# --------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, cfg, bq, bkv, num_kv_blocks, has_segments):
    (q_ref, k_ref, v_ref), qid_ref, kvid_ref, (o_ref, lse_ref) = _split_refs(refs, 3, has_segments)
    q_start = (pl.num_programs(0) - 1 - pl.program_id(0)) * bq  # reversed: see _forward
    q = q_ref[...]  # [bq, hd]
    q_ids = qid_ref[...] if has_segments else None
    c = cfg.scale * LOG2E  # logits in base-2 units: exp2(c * qk) = exp(scale * qk)

    def step(j, carry, masked):
        m, denom, acc = carry
        kv_start = pl.multiple_of(j * bkv, bkv)
        k = k_ref[pl.ds(kv_start, bkv), :]  # [bkv, hd]
        v = v_ref[pl.ds(kv_start, bkv), :]
        s = _dot(q, k, _NT) * c  # [bq, bkv] f32
        if masked:
            kv_ids = kvid_ref[pl.ds(kv_start, bkv)] if has_segments else None
            ok = _visible(q_start, kv_start, bq, bkv, cfg.causal, q_ids, kv_ids)
            s = jnp.where(ok, s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp2(s - m_new[:, None])
        if masked:  # a row with nothing visible yet must keep denom == 0, not count masked keys
            p = jnp.where(ok, p, 0.0)
        alpha = jnp.exp2(m - m_new)
        denom = denom * alpha + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
        return m_new, denom, acc

    n_full, n_visible = _kv_loop_bounds(q_start, bq, bkv, num_kv_blocks, cfg.causal, has_segments)
    carry = (
        jnp.full((bq,), MASK_VALUE, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
        jnp.zeros((bq, q.shape[-1]), jnp.float32),
    )
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    if cfg.causal or has_segments:
        carry = lax.fori_loop(n_full, n_visible, functools.partial(step, masked=True), carry)
    m, denom, acc = carry
    empty = denom == 0.0  # no visible key: output 0, and lse = +inf makes p = 0 in the backward
    safe = jnp.where(empty, 1.0, denom)
    o_ref[...] = (acc / safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(safe))


def _forward(q, k, v, q_ids, kv_ids, cfg):
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bq, bkv = cfg.block_q, cfg.block_kv
    n_q = q_len // bq
    has_segments = q_ids is not None
    # Grid (query tile, batch, head): tile is CUDA's fastest launch axis, so concurrently running programs
    # share one head's K/V in L2. Tiles go last to first: under causal masking the last tiles do the most
    # work, and launching them first shortens the tail.
    in_specs = [
        pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, n_q - 1 - i, h, 0)),
        pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
        pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
    ]
    args = [q, k, v]
    if has_segments:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, b, h: (b, n_q - 1 - i)),
            pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
        ]
        args += [q_ids, kv_ids]
    kernel = functools.partial(
        _fwd_kernel, cfg=cfg, bq=bq, bkv=bkv, num_kv_blocks=kv_len // bkv, has_segments=has_segments
    )
    out, lse = pl.pallas_call(
        kernel,
        grid=(n_q, batch, heads),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, n_q - 1 - i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, n_q - 1 - i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),  # base-2 log-sum-exp
        ],
        compiler_params=_compiler_params(cfg, head_dim, backward=False),
        interpret=cfg.interpret,
        name="flash_attention_fwd",
    )(*args)
    return out, lse


# --------------------------------------------------------------------------- backward


def _dq_kernel(*refs, cfg, bq, bkv, num_kv_blocks, has_segments):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qid_ref, kvid_ref, (dq_ref,) = _split_refs(refs, 6, has_segments)
    q_start = (pl.num_programs(0) - 1 - pl.program_id(0)) * bq  # reversed: see _forward
    q, do = q_ref[...], do_ref[...]  # [bq, hd]
    lse, delta = lse_ref[...], delta_ref[...]  # [bq]
    q_ids = qid_ref[...] if has_segments else None
    c = cfg.scale * LOG2E

    def step(j, dq, masked):
        kv_start = pl.multiple_of(j * bkv, bkv)
        k = k_ref[pl.ds(kv_start, bkv), :]  # [bkv, hd]
        v = v_ref[pl.ds(kv_start, bkv), :]
        p = jnp.exp2(_dot(q, k, _NT) * c - lse[:, None])  # [bq, bkv]
        if masked:
            kv_ids = kvid_ref[pl.ds(kv_start, bkv)] if has_segments else None
            p = jnp.where(_visible(q_start, kv_start, bq, bkv, cfg.causal, q_ids, kv_ids), p, 0.0)
        ds = p * (_dot(do, v, _NT) - delta[:, None])  # d(logits) / scale
        return dq + _dot(ds.astype(k.dtype), k)

    n_full, n_visible = _kv_loop_bounds(q_start, bq, bkv, num_kv_blocks, cfg.causal, has_segments)
    dq = jnp.zeros(q.shape, jnp.float32)
    dq = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dq)
    if cfg.causal or has_segments:
        dq = lax.fori_loop(n_full, n_visible, functools.partial(step, masked=True), dq)
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg, bq, bkv, num_q_blocks, group, has_segments):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qid_ref, kvid_ref, (dk_ref, dv_ref) = _split_refs(
        refs, 6, has_segments
    )
    kv_start = pl.program_id(0) * bkv
    k, v = k_ref[...], v_ref[...]  # [bkv, hd]
    kv_ids = kvid_ref[...] if has_segments else None
    c = cfg.scale * LOG2E

    def step(i, carry, head, masked):
        dk, dv = carry
        q_start = pl.multiple_of(i * bq, bq)
        q = q_ref[pl.ds(q_start, bq), head, :]  # [bq, hd]
        do = do_ref[pl.ds(q_start, bq), head, :]
        lse = lse_ref[head, pl.ds(q_start, bq)]  # [bq]
        delta = delta_ref[head, pl.ds(q_start, bq)]
        # Keys-major tiles (s^T = k q^T): every matmul below is NN or NT, no register transposes of p or ds.
        p_t = jnp.exp2(_dot(k, q, _NT) * c - lse[None, :])  # [bkv, bq]
        if masked:
            q_ids = qid_ref[pl.ds(q_start, bq)] if has_segments else None
            ok = _visible(q_start, kv_start, bq, bkv, cfg.causal, q_ids, kv_ids, keys_major=True)
            p_t = jnp.where(ok, p_t, 0.0)
        dv = dv + _dot(p_t.astype(do.dtype), do)  # [bkv, hd]
        ds_t = p_t * (_dot(v, do, _NT) - delta[None, :])  # [bkv, bq]
        dk = dk + _dot(ds_t.astype(q.dtype), q)
        return dk, dv

    if cfg.causal:
        first, first_full = causal_q_blocks(kv_start, bq, bkv, num_q_blocks)
    else:
        first, first_full = 0, 0
    if has_segments:
        first_full = num_q_blocks

    def head_step(head, carry):  # the query heads sharing this kv head: dk/dv summed over the group
        if cfg.causal or has_segments:
            carry = lax.fori_loop(first, first_full, functools.partial(step, head=head, masked=True), carry)
        return lax.fori_loop(first_full, num_q_blocks, functools.partial(step, head=head, masked=False), carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, group, head_step, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, cfg):
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bq, bkv = cfg.bq_bwd, cfg.bkv_bwd
    n_q = q_len // bq
    has_segments = q_ids is not None
    # delta_i = sum_d o_id * do_id = sum_j p_ij dp_ij: one fused elementwise pass in XLA.
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), d_out.astype(jnp.float32))  # [b, h, q_len]
    params = _compiler_params(cfg, head_dim, backward=True)

    # dq: one program per (batch, head, query tile).
    in_specs = [
        pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, n_q - 1 - i, h, 0)),
        pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
        pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
        pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, n_q - 1 - i, h, 0)),
        pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, n_q - 1 - i)),
        pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, n_q - 1 - i)),
    ]
    args = [q, k, v, d_out, lse, delta]
    if has_segments:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, b, h: (b, n_q - 1 - i)),
            pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
        ]
        args += [q_ids, kv_ids]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, bq=bq, bkv=bkv, num_kv_blocks=kv_len // bkv, has_segments=has_segments),
        grid=(n_q, batch, heads),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bq, None, head_dim), lambda i, b, h: (b, n_q - 1 - i, h, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_dq",
    )(*args)

    # dk, dv: one program per (batch, kv head, key tile), looping over the group's query heads.
    in_specs = [
        pl.BlockSpec((None, q_len, group, head_dim), lambda j, b, g: (b, 0, g, 0)),
        pl.BlockSpec((None, bkv, None, head_dim), lambda j, b, g: (b, j, g, 0)),
        pl.BlockSpec((None, bkv, None, head_dim), lambda j, b, g: (b, j, g, 0)),
        pl.BlockSpec((None, q_len, group, head_dim), lambda j, b, g: (b, 0, g, 0)),
        pl.BlockSpec((None, group, q_len), lambda j, b, g: (b, g, 0)),
        pl.BlockSpec((None, group, q_len), lambda j, b, g: (b, g, 0)),
    ]
    args = [q, k, v, d_out, lse, delta]
    if has_segments:
        in_specs += [
            pl.BlockSpec((None, q_len), lambda j, b, g: (b, 0)),
            pl.BlockSpec((None, bkv), lambda j, b, g: (b, j)),
        ]
        args += [q_ids, kv_ids]
    kv_spec = pl.BlockSpec((None, bkv, None, head_dim), lambda j, b, g: (b, j, g, 0))
    dk, dv = pl.pallas_call(
        functools.partial(
            _dkv_kernel, cfg=cfg, bq=bq, bkv=bkv, num_q_blocks=q_len // bq, group=group, has_segments=has_segments
        ),
        grid=(kv_len // bkv, batch, kv_heads),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_dkv",
    )(*args)
    return dq, dk, dv


def _compiler_params(cfg, head_dim, backward):
    """Triton launch parameters: the caller's, else the defaults in the module docstring."""
    if backward:
        num_warps, num_stages = cfg.num_warps_bwd or 4, cfg.num_stages_bwd or 2
    else:
        num_warps, num_stages = cfg.num_warps or (8 if head_dim >= 128 else 4), cfg.num_stages or 2
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


_attend = make_flash_attention(_forward, _backward)


def flash_attention(
    q,
    k,
    v,
    *,
    causal=False,
    segment_ids=None,
    block_q=128,
    block_kv=128,
    block_q_bwd=64,
    block_kv_bwd=64,
    num_warps=None,
    num_stages=None,
    num_warps_bwd=None,
    num_stages_bwd=None,
    interpret=False,
):
    """Exact attention with the Triton-lowered Pallas kernels; differentiable (custom VJP).

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    segment_ids: [batch, len] or (q_ids, kv_ids), 0 = padding. Returns [batch, q_len, heads, head_dim].
    Blocks are shrunk to the sequence when longer; they must be powers of two that divide it.
    num_warps/num_stages (forward) and num_warps_bwd/num_stages_bwd: Triton launch parameters
    (None: the defaults in the module docstring).
    interpret=True runs the same kernels in Pallas interpret mode (any backend, e.g. CPU tests).
    """
    batch, q_len, _, kv_len, _, head_dim = check_inputs(q, k, v, supported_head_dims=HEAD_DIMS)
    q_ids, kv_ids = normalize_segment_ids(segment_ids, batch, q_len, kv_len)
    blocks = {}
    for name, block, length, what in (
        ("block_q", block_q, q_len, "q_len"),
        ("block_kv", block_kv, kv_len, "kv_len"),
        ("block_q_bwd", block_q_bwd, q_len, "q_len"),
        ("block_kv_bwd", block_kv_bwd, kv_len, "kv_len"),
    ):
        b = fit_block(name, block, length, what)
        if b & (b - 1) or b < 16:
            raise ValueError(f"{name}={b}: the Triton kernel needs a power-of-two block of at least 16")
        blocks[name] = b
    cfg = Config(
        causal=bool(causal),
        scale=head_dim**-0.5,
        interpret=bool(interpret),
        num_warps=num_warps,
        num_stages=num_stages,
        num_warps_bwd=num_warps_bwd,
        num_stages_bwd=num_stages_bwd,
        **blocks,
    )
    return _attend(q, k, v, q_ids, kv_ids, cfg)
