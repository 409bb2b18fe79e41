"""What the GPU and TPU flash-attention kernels share: argument checks and the custom VJP.

Both backends compute exactly softmax(q k^T / sqrt(d) + mask) v, tiled so the
[q_len, kv_len] logits never reach HBM. The forward saves the per-row
log-sum-exp; the backward recomputes the probabilities tile by tile from it
(FlashAttention-2):

    p  = exp(s - lse)                 s = q k^T * scale
    dv = p^T do        dp = do v^T    ds = p * (dp - delta),  delta = rowsum(o * do)
    dq = ds k * scale  dk = ds^T q * scale

Conventions (the same as research.attention.dense_attention):
- q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim],
  kv_heads divides heads and query head h reads kv head h // (heads // kv_heads).
- causal: query i sees keys j <= i (top-left aligned when q_len != kv_len).
- segment ids (q_ids [batch, q_len], kv_ids [batch, kv_len]): same id only; 0 is padding.
- A query row with no visible key (a padding query) gets output 0 and zero
  gradients (dense_attention gives such rows a uniform average instead; losses
  mask padding, so training is unaffected).
- Sequences are not padded: block sizes must divide the lengths (a block larger
  than its sequence is shrunk to the sequence length).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

# Finite, so masked logits never produce inf - inf = NaN in the running max.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2E = math.log2(math.e)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class Config:
    """Static kernel parameters (hashable: it is a nondiff argument of the custom VJP)."""

    causal: bool
    block_q: int
    block_kv: int
    scale: float
    interpret: object  # False, True, or a backend's interpreter parameters (pltpu.InterpretParams)
    # Backward tiles (defaults: the forward's). GPU only: Triton launch parameters.
    block_q_bwd: int | None = None
    block_kv_bwd: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None

    @property
    def bq_bwd(self):
        return self.block_q_bwd or self.block_q

    @property
    def bkv_bwd(self):
        return self.block_kv_bwd or self.block_kv


def normalize_segment_ids(segment_ids, batch, q_len, kv_len):
    """None | [b, len] | (q_ids, kv_ids) -> (q_ids [b, q_len] int32, kv_ids [b, kv_len] int32) or (None, None)."""
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, tuple | list):
        q_ids, kv_ids = segment_ids
    else:
        q_ids = kv_ids = segment_ids
    if q_ids.shape != (batch, q_len) or kv_ids.shape != (batch, kv_len):
        raise ValueError(
            f"segment_ids must be [batch, len] = {(batch, q_len)} (and {(batch, kv_len)} for keys), "
            f"got {q_ids.shape} and {kv_ids.shape}"
        )
    return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)


def fit_block(name, block, length, what):
    """The block size to use along a sequence of `length`; a ValueError if it doesn't tile it."""
    if not isinstance(block, int) or block <= 0:
        raise ValueError(f"{name} must be a positive int, got {block!r}")
    block = min(block, length)
    if length % block:
        raise ValueError(
            f"{name}={block} does not divide {what}={length}: flash attention does not pad; "
            f"choose a {name} that divides the sequence length (e.g. a power of two)"
        )
    return block


def check_inputs(q, k, v, *, supported_head_dims=None):
    """Shape and dtype checks shared by both backends; returns (batch, q_len, heads, kv_len, kv_heads, head_dim)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"flash attention takes q [b, q_len, heads, hd], k/v [b, kv_len, kv_heads, hd]; "
            f"got ranks {q.ndim}, {k.ndim}, {v.ndim}"
        )
    batch, q_len, heads, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [batch, kv_len, kv_heads, {head_dim}] like q; got {k.shape}, {v.shape}")
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.dtype(x.dtype) not in SUPPORTED_DTYPES:
            raise ValueError(
                f"flash attention supports {[str(d) for d in SUPPORTED_DTYPES]}; {name} is {jnp.dtype(x.dtype)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if supported_head_dims is not None and head_dim not in supported_head_dims:
        raise ValueError(
            f"head_dim={head_dim} cannot be tiled by this kernel; supported head dims: {sorted(supported_head_dims)}"
        )
    return batch, q_len, heads, kv_len, kv_heads, head_dim


def causal_kv_blocks(q_start, block_q, block_kv, num_kv_blocks):
    """For query rows [q_start, q_start + block_q): (blocks with no masked entry, blocks with any visible entry).

    Key block j is fully visible when its last key j*bkv + bkv - 1 <= q_start,
    and partly visible while its first key j*bkv <= q_start + block_q - 1.
    Works on Python ints and traced int32 scalars alike.
    """
    full = jnp.minimum((q_start + 1) // block_kv, num_kv_blocks)
    visible = jnp.minimum((q_start + block_q + block_kv - 1) // block_kv, num_kv_blocks)
    return full, visible


def causal_q_blocks(kv_start, block_q, block_kv, num_q_blocks):
    """For key rows [kv_start, kv_start + block_kv): (first query block that sees any, first that sees all)."""
    first = jnp.minimum(kv_start // block_q, num_q_blocks)
    first_full = jnp.minimum((kv_start + block_kv - 1 + block_q - 1) // block_q, num_q_blocks)
    return first, first_full


def make_flash_attention(forward, backward):
    """A differentiable attention function from a backend's forward and backward kernels.

    forward(q, k, v, q_ids, kv_ids, config) -> (out, residual) where residual holds the log-sum-exp;
    backward(q, k, v, q_ids, kv_ids, out, residual, d_out, config) -> (dq, dk, dv).
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
    def attend(q, k, v, q_ids, kv_ids, config):
        return forward(q, k, v, q_ids, kv_ids, config)[0]

    def attend_fwd(q, k, v, q_ids, kv_ids, config):
        out, lse = forward(q, k, v, q_ids, kv_ids, config)
        return out, (q, k, v, q_ids, kv_ids, out, lse)

    def attend_bwd(config, res, d_out):
        q, k, v, q_ids, kv_ids, out, lse = res
        dq, dk, dv = backward(q, k, v, q_ids, kv_ids, out, lse, d_out, config)
        return dq, dk, dv, None, None  # segment ids are integers: no cotangent

    attend.defvjp(attend_fwd, attend_bwd)
    return attend
