"""Fused dequantize-matmul for 4-bit weights (int4 / NF4) as a Pallas kernel: y = x @ dequant(W).

The weight never exists in float outside the kernel: each program reads its
[K/2, block_n] slab of packed codes (half a byte per weight) and the matching
scales, decodes one scale group at a time in registers, and accumulates in
float32. Layout (the one research.quant stores):

    codes  uint8 [K // 2, N]   row 2i of W in the low nibble, row 2i + 1 in the high one
    scales f32   [K // g, N]   one per output column and group of g consecutive rows

Because a scale is shared by the g rows of its group, it factors out of that
group's partial dot product: acc += (x_g @ codes_g) * s_g, one multiply per
output per group instead of one per weight. The nibble interleave is undone on
the activation side: x's even columns meet the low nibbles and its odd columns
the high ones, so the kernel never reshapes a tile.

Portable Pallas (pl.ds slices, jnp.dot, fori_loop): Triton-lowerable on GPUs,
and run with interpret=True on any backend (how the CPU tests check it against
`reference`). Imports only jax.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

FORMATS = ("int4", "nf4")


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes; on GPUs powers of two >= 16 (Triton's dot), with group_size >= 32."""

    block_m: int = 64  # rows of x per program
    block_n: int = 64  # output columns per program
    num_warps: int = 4  # Triton launch parameters (ignored elsewhere)
    num_stages: int = 2


def _decode(codes, format, codebook):
    """int32 codes in 0..15 -> float32 values (before the scale)."""
    if format == "int4":
        return codes.astype(jnp.float32) - 8.0
    # NF4: a 16-way select instead of a gather (gathers from a table are awkward in Triton/Mosaic).
    values = jnp.zeros(codes.shape, jnp.float32)
    for i, v in enumerate(codebook):
        values = jnp.where(codes == i, jnp.float32(v), values)
    return values


def _kernel(xe_ref, xo_ref, codes_ref, scales_ref, o_ref, *, format, codebook, half_group, num_groups):
    bm, bn = o_ref.shape

    def group(t, acc):
        rows = pl.ds(pl.multiple_of(t * half_group, half_group), half_group)
        packed = codes_ref[rows, :].astype(jnp.int32)  # [g/2, bn]; int32: GPUs do little arithmetic on 8 bits
        # Decoded in float32, multiplied in x's dtype (bf16 on GPUs: the tensor cores' input type).
        lo = _decode(packed & 0xF, format, codebook).astype(xe_ref.dtype)  # W rows 2r
        hi = _decode(packed >> 4, format, codebook).astype(xe_ref.dtype)  # W rows 2r + 1
        partial = jnp.dot(xe_ref[:, rows], lo, preferred_element_type=jnp.float32)
        partial += jnp.dot(xo_ref[:, rows], hi, preferred_element_type=jnp.float32)  # [bm, bn]
        return acc + partial * scales_ref[pl.ds(t, 1), :]  # the group's scale, factored out

    acc = lax.fori_loop(0, num_groups, group, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _check(x, codes, scales, format, group_size, codebook, blocks):
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; the kernel takes one of {FORMATS}")
    if format == "nf4" and (codebook is None or len(codebook) != 16):
        raise ValueError("format='nf4' needs its 16-value codebook")
    m, k = x.shape
    if codes.dtype != jnp.uint8 or codes.shape[0] * 2 != k or scales.shape != (k // group_size, codes.shape[1]):
        raise ValueError(
            f"x {x.shape}, codes {codes.shape} {codes.dtype}, scales {scales.shape} do not fit "
            f"codes uint8 [K/2, N] and scales [K/group_size, N] with K={k}, group_size={group_size}"
        )
    if group_size % 2 or k % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide K={k}")
    n = codes.shape[1]
    if m % blocks.block_m or n % blocks.block_n:
        raise ValueError(f"block_m={blocks.block_m}, block_n={blocks.block_n} must divide M={m}, N={n}")


@functools.partial(jax.jit, static_argnames=("format", "group_size", "codebook", "blocks", "interpret"))
def quant_matmul(x, codes, scales, *, format, group_size, codebook=None, blocks=Blocks(), interpret=False):
    """x [M, K] @ dequant(codes, scales) -> [M, N] float32. codebook: NF4's 16 values (a tuple), for nf4."""
    _check(x, codes, scales, format, group_size, codebook, blocks)
    m, k = x.shape
    n = codes.shape[1]
    pairs = x.reshape(m, k // 2, 2)  # [M, K/2, 2]: column 2r pairs with the low nibble of code row r
    x_even, x_odd = pairs[..., 0], pairs[..., 1]
    bm, bn = blocks.block_m, blocks.block_n
    kernel = functools.partial(
        _kernel,
        format=format,
        codebook=codebook,
        half_group=group_size // 2,
        num_groups=k // group_size,
    )
    return pl.pallas_call(
        kernel,
        grid=(m // bm, n // bn),
        in_specs=[
            pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((k // 2, bn), lambda i, j: (0, j)),
            pl.BlockSpec((k // group_size, bn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
        compiler_params=pltriton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name="quant_matmul",
    )(x_even, x_odd, codes, scales.astype(jnp.float32))


def reference(x, codes, scales, *, format, group_size, codebook=None):
    """The slow path: unpack and dequantize the whole weight in float32, then one matmul."""
    k = x.shape[1]
    unpacked = jnp.stack([codes & 0xF, codes >> 4], axis=1).reshape(k, -1)  # [K, N]
    if format == "int4":
        values = unpacked.astype(jnp.float32) - 8.0
    else:
        values = jnp.asarray(codebook, jnp.float32)[unpacked.astype(jnp.int32)]
    w = (values.reshape(k // group_size, group_size, -1) * scales[:, None, :]).reshape(k, -1)  # [K, N]
    return jnp.dot(x.astype(jnp.float32), w, precision=lax.Precision.HIGHEST)
