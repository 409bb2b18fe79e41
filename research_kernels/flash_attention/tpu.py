"""Flash attention for TPUs: Pallas kernels lowered through Mosaic.

The TPU shape of the algorithm differs from the GPU one: instead of a loop
inside the kernel, the key tiles are the innermost ("arbitrary") grid axis and
the Pallas pipeline double-buffers their HBM->VMEM copies; the online-softmax
state lives in VMEM scratch across those grid steps.

Layout choices (Mosaic tiles vregs as 8 sublanes x 128 lanes):
- q/k/v are transposed to [batch, heads, len, head_dim] so each tile is a
  dense 2-D [rows, head_dim] slab.
- The running max / sum and the log-sum-exp the forward writes are kept
  lane-replicated, [rows, 128], so broadcasting them against a [rows, block_kv]
  tile is a lane tile copy, not a relayout (one lane of the log-sum-exp is kept
  as the residual and re-broadcast for the backward).
- Query segment ids are lane-replicated [b, q_len, 128], key segment ids
  sublane-replicated [b, 8, kv_len].
- On hardware: block_q a multiple of 8, block_kv a multiple of 128 (it is the
  lane axis of the logits tile), head_dim <= 128 or a multiple of 128. The
  dk/dv kernel works keys-major (s^T = k q^T: all matmuls NN/NT, no transposes
  of p or ds), so there the query tile is the lane axis: block_q_bwd a multiple
  of 128; its per-query lse/delta/segment ids are sublane-replicated [8, q_len].
  128 x 128 tiles are the default; wider key tiles (256-512) mean fewer grid
  steps and are worth trying for long sequences (not measured: no TPU here).
- Causal: key tiles above the diagonal are skipped (pl.when) and their index
  map is clamped to the last visible tile, so the pipeline issues no copy for
  them; only diagonal tiles pay for the mask.
Interpret mode (interpret=True) runs the same kernels on any backend and does
not enforce the hardware tiling rules, so tests can use small tiles.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from research_kernels.flash_attention.common import (
    LOG2E,
    MASK_VALUE,
    Config,
    check_inputs,
    fit_block,
    make_flash_attention,
    normalize_segment_ids,
)

LANES, SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


# Index arithmetic below uses lax.div / lax.rem (non-negative operands): jnp's floor division
# adds sign corrections that Mosaic lowers through chip-specific code.


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _lanes(x, n):
    """x: [rows, 128], equal along lanes -> [rows, n]."""
    if n == LANES:
        return x
    if n % LANES == 0:
        return jnp.tile(x, (1, n // LANES))
    if n < LANES:
        return x[:, :n]
    raise ValueError(f"width {n} must be below {LANES} or a multiple of it")


def _visible(q_start, kv_start, bq, bkv, causal, qid_ref, kvid_ref):
    """[bq, bkv] bool mask of this tile, or None when nothing is masked."""
    ok = None
    if causal:
        rows = q_start + lax.broadcasted_iota(jnp.int32, (bq, bkv), 0)
        cols = kv_start + lax.broadcasted_iota(jnp.int32, (bq, bkv), 1)
        ok = cols <= rows
    if qid_ref is not None:
        q_ids = _lanes(qid_ref[...], bkv)  # [bq, bkv]
        kv_ids = kvid_ref[:1, :]  # [1, bkv]
        same = (q_ids == kv_ids) & (kv_ids != 0)
        ok = same if ok is None else ok & same
    return ok


def _visible_keys_major(q_start, kv_start, bq, bkv, causal, kvid_ref, qid_ref):
    """[bkv, bq] bool mask of a keys-major tile (the dk/dv kernel's s^T), or None when nothing is masked."""
    ok = None
    if causal:
        kv_pos = kv_start + lax.broadcasted_iota(jnp.int32, (bkv, bq), 0)
        q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bkv, bq), 1)
        ok = kv_pos <= q_pos
    if kvid_ref is not None:
        kv_ids = _lanes(kvid_ref[...], bq)  # [bkv, bq]
        q_ids = qid_ref[:1, :]  # [1, bq]
        same = (kv_ids == q_ids) & (kv_ids != 0)
        ok = same if ok is None else ok & same
    return ok


def _run_tile(compute, causal, has_segments, q_start, kv_start, bq, bkv):
    """Calls compute(masked) for a (query tile, key tile) pair: skipped above the diagonal, masked only where needed."""
    if not causal:
        compute(has_segments)
        return
    below = kv_start <= q_start + bq - 1  # some key of the tile is visible to some query
    on_diagonal = kv_start + bkv - 1 > q_start  # some pair of the tile is masked
    if has_segments:
        pl.when(below)(lambda: compute(True))
    else:
        pl.when(below & on_diagonal)(lambda: compute(True))
        pl.when(below & jnp.logical_not(on_diagonal))(lambda: compute(False))


def _split(refs, n_in, has_segments):
    ins = refs[:n_in]
    if has_segments:
        return ins, refs[n_in], refs[n_in + 1], refs[n_in + 2 :]
    return ins, None, None, refs[n_in:]


def _segment_inputs(q_ids, kv_ids, bq, bkv, q_block, kv_block):
    """Lane/sublane-replicated segment ids and their BlockSpecs (index maps given as (grid) -> tile index)."""
    q_ids = jnp.broadcast_to(q_ids[:, :, None], (*q_ids.shape, LANES))  # [b, q_len, 128]
    kv_ids = jnp.broadcast_to(kv_ids[:, None, :], (kv_ids.shape[0], SUBLANES, kv_ids.shape[1]))  # [b, 8, kv_len]
    specs = [
        pl.BlockSpec((None, bq, LANES), lambda b, h, i, j: (b, q_block(i, j), 0)),
        pl.BlockSpec((None, SUBLANES, bkv), lambda b, h, i, j: (b, 0, kv_block(i, j))),
    ]
    return [q_ids, kv_ids], specs


def _sublanes(x):
    """[..., n] -> [..., 8, n]: per-query values as sublane-replicated rows (the keys-major dk/dv kernel)."""
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], SUBLANES, x.shape[-1]))


def _params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


# --------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, cfg, bq, bkv, num_kv_blocks, has_segments):
    (q_ref, k_ref, v_ref), qid_ref, kvid_ref, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _split(refs, 3, has_segments)
    i, j = pl.program_id(2), pl.program_id(3)
    head_dim = acc_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def compute(masked):
        s = _dot(q_ref[...], k_ref[...], _NT) * (cfg.scale * LOG2E)  # [bq, bkv], base-2 logits
        if masked:
            ok = _visible(i * bq, j * bkv, bq, bkv, cfg.causal, qid_ref, kvid_ref)
            s = jnp.where(ok, s, MASK_VALUE)
        m_prev = m_ref[...]  # [bq, 128]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp2(s - _lanes(m_next, bkv))
        if masked:  # keeps l == 0 for rows that have seen nothing visible
            p = jnp.where(ok, p, 0.0)
        alpha = jnp.exp2(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        m_ref[...] = m_next
        v = v_ref[...]
        acc_ref[...] = acc_ref[...] * _lanes(alpha, head_dim) + _dot(p.astype(v.dtype), v)

    _run_tile(compute, cfg.causal, has_segments, i * bq, j * bkv, bq, bkv)

    @pl.when(j == num_kv_blocks - 1)
    def _finish():
        denom = l_ref[...]
        empty = denom == 0.0  # no visible key: output 0; lse = +inf gives p = 0 in the backward
        safe = jnp.where(empty, 1.0, denom)
        o_ref[...] = (acc_ref[...] / _lanes(safe, head_dim)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, jnp.inf, m_ref[...] + jnp.log2(safe))


def _last_kv_block(i, bq, bkv):
    return lax.div(i * bq + bq - 1, bkv)


def _forward(q, k, v, q_ids, kv_ids, cfg):
    """q, k, v heads-major: [b, h, len, hd]. Returns out [b, h, q_len, hd] and the base-2 lse [b, h, q_len]."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bq, bkv = cfg.block_q, cfg.block_kv
    has_segments = q_ids is not None

    def kv_block(i, j):  # tiles above the diagonal re-use the last visible one: no copy issued
        return jnp.minimum(j, _last_kv_block(i, bq, bkv)) if cfg.causal else j

    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), lambda b, h, i, j: (b, h, i, 0)),
        pl.BlockSpec((None, None, bkv, head_dim), lambda b, h, i, j: (b, lax.div(h, group), kv_block(i, j), 0)),
        pl.BlockSpec((None, None, bkv, head_dim), lambda b, h, i, j: (b, lax.div(h, group), kv_block(i, j), 0)),
    ]
    args = [q, k, v]
    if has_segments:
        seg_args, seg_specs = _segment_inputs(q_ids, kv_ids, bq, bkv, lambda i, j: i, kv_block)
        args += seg_args
        in_specs += seg_specs
    kernel = functools.partial(
        _fwd_kernel, cfg=cfg, bq=bq, bkv=bkv, num_kv_blocks=kv_len // bkv, has_segments=has_segments
    )
    out, lse = pl.pallas_call(
        kernel,
        grid=(batch, heads, q_len // bq, kv_len // bkv),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, bq, head_dim), lambda b, h, i, j: (b, h, i, 0)),
            pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j: (b, h, i, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len, LANES), jnp.float32),
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, LANES), jnp.float32),  # running max
            pltpu.VMEM((bq, LANES), jnp.float32),  # running sum
            pltpu.VMEM((bq, head_dim), jnp.float32),  # output accumulator
        ],
        compiler_params=_params(),
        interpret=cfg.interpret,
        name="flash_attention_fwd_tpu",
    )(*args)
    return out, lse[..., 0]  # keep one lane as the residual: [b, h, q_len]


# --------------------------------------------------------------------------- backward


def _dq_kernel(*refs, cfg, bq, bkv, num_kv_blocks, has_segments):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qid_ref, kvid_ref, (dq_ref, acc_ref) = _split(
        refs, 6, has_segments
    )
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def compute(masked):
        k = k_ref[...]
        p = jnp.exp2(_dot(q_ref[...], k, _NT) * (cfg.scale * LOG2E) - _lanes(lse_ref[...], bkv))  # [bq, bkv]
        if masked:
            p = jnp.where(_visible(i * bq, j * bkv, bq, bkv, cfg.causal, qid_ref, kvid_ref), p, 0.0)
        ds = p * (_dot(do_ref[...], v_ref[...], _NT) - _lanes(delta_ref[...], bkv))
        acc_ref[...] += _dot(ds.astype(k.dtype), k)

    _run_tile(compute, cfg.causal, has_segments, i * bq, j * bkv, bq, bkv)

    @pl.when(j == num_kv_blocks - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg, bq, bkv, num_q_blocks, num_steps, has_segments):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qid_ref, kvid_ref, rest = _split(refs, 6, has_segments)
    dk_ref, dv_ref, dk_acc, dv_acc = rest
    j, t = pl.program_id(2), pl.program_id(3)
    i = lax.rem(t, num_q_blocks)  # the step walks (head in group, query tile)

    @pl.when(t == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def compute(masked):
        # Keys-major (s^T = k q^T, as the query-tile axis is the lane axis here): every matmul is NN or NT,
        # so p and ds never need an XLU transpose.
        q, do = q_ref[...], do_ref[...]
        s_t = _dot(k_ref[...], q, _NT) * (cfg.scale * LOG2E)  # [bkv, bq]
        p_t = jnp.exp2(s_t - lse_ref[:1, :])  # lse, delta: [8, bq] sublane-replicated rows
        if masked:
            p_t = jnp.where(_visible_keys_major(i * bq, j * bkv, bq, bkv, cfg.causal, kvid_ref, qid_ref), p_t, 0.0)
        dv_acc[...] += _dot(p_t.astype(do.dtype), do)  # [bkv, hd]
        ds_t = p_t * (_dot(v_ref[...], do, _NT) - delta_ref[:1, :])
        dk_acc[...] += _dot(ds_t.astype(q.dtype), q)

    _run_tile(compute, cfg.causal, has_segments, i * bq, j * bkv, bq, bkv)

    @pl.when(t == num_steps - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, cfg):
    """Heads-major arguments as in _forward; returns dq, dk, dv heads-major."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    bq, bkv = cfg.bq_bwd, cfg.bkv_bwd
    n_q, n_kv = q_len // bq, kv_len // bkv
    has_segments = q_ids is not None
    delta_rows = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)  # [b, h, q_len]
    lse_rows = lse
    # The dq kernel is query-major: per-query values lane-replicated, [b, h, q_len, 128].
    delta = jnp.broadcast_to(delta_rows[..., None], (*delta_rows.shape, LANES))
    lse = jnp.broadcast_to(lse_rows[..., None], (*lse_rows.shape, LANES))

    # dq: grid (batch, head, query tile, key tile), key tiles innermost.
    def kv_block(i, j):
        return jnp.minimum(j, _last_kv_block(i, bq, bkv)) if cfg.causal else j

    row_spec = pl.BlockSpec((None, None, bq, head_dim), lambda b, h, i, j: (b, h, i, 0))
    lane_spec = pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j: (b, h, i, 0))
    kv_spec = pl.BlockSpec((None, None, bkv, head_dim), lambda b, h, i, j: (b, lax.div(h, group), kv_block(i, j), 0))
    in_specs = [row_spec, kv_spec, kv_spec, row_spec, lane_spec, lane_spec]
    args = [q, k, v, d_out, lse, delta]
    if has_segments:
        seg_args, seg_specs = _segment_inputs(q_ids, kv_ids, bq, bkv, lambda i, j: i, kv_block)
        args += seg_args
        in_specs += seg_specs
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, bq=bq, bkv=bkv, num_kv_blocks=n_kv, has_segments=has_segments),
        grid=(batch, heads, n_q, n_kv),
        in_specs=in_specs,
        out_specs=row_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, head_dim), jnp.float32)],
        compiler_params=_params(),
        interpret=cfg.interpret,
        name="flash_attention_dq_tpu",
    )(*args)

    # dk, dv: grid (batch, kv head, key tile, step); a step is one (query head of the group, query tile),
    # so dk/dv are summed over the group in VMEM.
    def q_block(j, t):  # query tiles wholly above this key tile re-use the first visible one
        i = lax.rem(t, n_q)
        return jnp.maximum(i, lax.div(j * bkv, bq)) if cfg.causal else i

    def q_head(g, t):
        return g * group + lax.div(t, n_q)

    row_spec = pl.BlockSpec((None, None, bq, head_dim), lambda b, g, j, t: (b, q_head(g, t), q_block(j, t), 0))
    sub_spec = pl.BlockSpec((None, None, SUBLANES, bq), lambda b, g, j, t: (b, q_head(g, t), 0, q_block(j, t)))
    kv_spec = pl.BlockSpec((None, None, bkv, head_dim), lambda b, g, j, t: (b, g, j, 0))
    in_specs = [row_spec, kv_spec, kv_spec, row_spec, sub_spec, sub_spec]
    args = [q, k, v, d_out, _sublanes(lse_rows), _sublanes(delta_rows)]
    if has_segments:  # keys-major: key ids lane-replicated, query ids sublane-replicated
        args += [_sublanes(q_ids), jnp.broadcast_to(kv_ids[:, :, None], (*kv_ids.shape, LANES))]
        in_specs += [
            pl.BlockSpec((None, SUBLANES, bq), lambda b, g, j, t: (b, 0, q_block(j, t))),
            pl.BlockSpec((None, bkv, LANES), lambda b, g, j, t: (b, j, 0)),
        ]
    num_steps = group * n_q
    dk, dv = pl.pallas_call(
        functools.partial(
            _dkv_kernel, cfg=cfg, bq=bq, bkv=bkv, num_q_blocks=n_q, num_steps=num_steps, has_segments=has_segments
        ),
        grid=(batch, kv_heads, n_kv, num_steps),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bkv, head_dim), jnp.float32), pltpu.VMEM((bkv, head_dim), jnp.float32)],
        compiler_params=_params(),
        interpret=cfg.interpret,
        name="flash_attention_dkv_tpu",
    )(*args)
    return dq, dk, dv


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
    block_q_bwd=None,
    block_kv_bwd=None,
    interpret=False,
):
    """Exact attention with the Mosaic (TPU) Pallas kernels; differentiable (custom VJP).

    Same arguments and result as research_kernels.flash_attention.gpu.flash_attention. Blocks are shrunk to the
    sequence when longer and must divide it; on hardware block_q must be a multiple of 8 and block_kv and
    block_q_bwd of 128 (unless equal to the whole sequence). interpret=True runs the kernels in Pallas interpret
    mode; interpret=pltpu.InterpretParams() in the TPU-semantics interpreter (slower; scratch starts as NaN,
    out-of-bounds reads raise), which also checks the pipeline and scratch handling.
    """
    batch, q_len, _, kv_len, _, head_dim = check_inputs(q, k, v)
    if head_dim > LANES and head_dim % LANES:
        raise ValueError(f"head_dim={head_dim} cannot be tiled on TPU: use head_dim <= 128 or a multiple of 128")
    q_ids, kv_ids = normalize_segment_ids(segment_ids, batch, q_len, kv_len)
    blocks = {}
    for name, block, length, what, multiple in (
        ("block_q", block_q, q_len, "q_len", SUBLANES),
        ("block_kv", block_kv, kv_len, "kv_len", LANES),
        ("block_q_bwd", block_q_bwd or block_q, q_len, "q_len", LANES),  # lane axis of the keys-major tiles
        ("block_kv_bwd", block_kv_bwd or block_kv, kv_len, "kv_len", LANES),
    ):
        b = fit_block(name, block, length, what)
        if not interpret and b % multiple and b != length:
            raise ValueError(f"{name}={b}: on TPU it must be a multiple of {multiple} (or the whole sequence)")
        if interpret and b % LANES and b > LANES:
            raise ValueError(f"{name}={b}: must be below {LANES} or a multiple of it")
        blocks[name] = b
    interpret = interpret if isinstance(interpret, pltpu.InterpretParams) else bool(interpret)
    cfg = Config(causal=bool(causal), scale=head_dim**-0.5, interpret=interpret, **blocks)
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [b, heads, len, hd]
    out = _attend(qh, kh, vh, q_ids, kv_ids, cfg)
    return out.transpose(0, 2, 1, 3)  # [b, q_len, heads, hd]
