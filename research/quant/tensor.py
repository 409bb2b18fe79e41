"""Weight-only quantized tensors: int8, int4 and NF4 codes with per-channel or per-group scales.

A weight is viewed as a matrix [K, N]: K = its contraction (input) axes, the ones a
matmul sums over, N = everything else (output channels). Scales are per output
channel and per group of `group_size` consecutive rows of K (per-channel = one
group spanning K), so a scale multiplies exactly the products that one dot
product sums, the layout a fused dequant-matmul wants.

- int8 / int4: symmetric absmax, scale = absmax / qmax, q = round(w / scale)
  clipped to [-qmax, qmax] (127 / 7); |w - q * scale| <= scale / 2.
- NF4: scale = absmax, w / scale in [-1, 1] rounded to the nearest of the 16
  NF4 values; |w - code * scale| <= max_half_gap * absmax.
- 4-bit codes are packed two per uint8 byte along K (row 2i in the low nibble,
  row 2i + 1 in the high one), so they really take half a byte each.
- double quantization (QLoRA): the float32 scales are themselves quantized to
  int8 in blocks of 256 after subtracting their mean (they are all positive, so
  centring doubles the resolution), with one float32 scale per block:
  32 bits per scale -> 8 + 32/256.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from research.quant.codebook import NF4, NF4_MIDPOINTS

FORMATS = ("int8", "int4", "nf4")
BITS = {"int8": 8, "int4": 4, "nf4": 4}
QMAX = {"int8": 127, "int4": 7}
SCALE_BLOCK = 256  # double quantization: first-level scales per second-level scale (QLoRA's choice)


@struct.dataclass
class QTensor:
    """A quantized weight; a pytree whose leaves are the packed codes and the scales."""

    codes: jax.Array  # int8 [K, N] (int8), or uint8 [K // 2, N] (int4, nf4: two codes a byte along K)
    scales: jax.Array  # float32 [K // g, N]; int8 [blocks, SCALE_BLOCK] when double-quantized
    scale_scales: jax.Array | None  # double quantization: float32 [blocks], else None
    scale_offset: jax.Array | None  # double quantization: float32 [] (the scales' mean), else None
    format: str = struct.field(pytree_node=False)
    group_size: int = struct.field(pytree_node=False)  # rows of K per scale
    shape: tuple = struct.field(pytree_node=False)  # the float weight's shape
    contract_axes: tuple = struct.field(pytree_node=False)  # the axes of `shape` that form K
    dtype: str = struct.field(pytree_node=False)  # the float weight's dtype, which dequantize returns

    @property
    def perm(self) -> tuple:
        return tuple(self.contract_axes) + tuple(a for a in range(len(self.shape)) if a not in self.contract_axes)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        k = math.prod(self.shape[a] for a in self.contract_axes)
        return k, math.prod(self.shape) // k

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: codes, scales and, if any, the scales' scales."""
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self))

    def dequantize(self) -> jax.Array:
        return dequantize(self)


def _check_axes(shape, contract_axes, name) -> tuple:
    if len(shape) < 2:
        raise ValueError(f"{name}: only weights of rank >= 2 are quantized, got shape {tuple(shape)}")
    axes = tuple(sorted(a % len(shape) for a in contract_axes))
    if not axes or len(set(axes)) != len(axes) or len(axes) == len(shape):
        raise ValueError(f"{name}: contract_axes={tuple(contract_axes)} must be some but not all axes of {shape}")
    return axes


def _check_group(format, group_size, k, name) -> int:
    if format not in FORMATS:
        raise ValueError(f"quant.format={format!r} ({name}); choose one of {FORMATS}")
    g = k if group_size == -1 else group_size
    if g <= 0 or k % g:
        raise ValueError(f"quant.group_size={group_size} must divide {name}'s contraction dimension {k} (or be -1)")
    if BITS[format] == 4 and g % 2:
        raise ValueError(f"quant.group_size={g} ({name}) must be even: 4-bit codes are packed two per byte")
    return g


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """uint8 [K, N] values in 0..15 -> uint8 [K // 2, N]: row 2i low nibble, row 2i + 1 high."""
    pairs = codes.reshape(codes.shape[0] // 2, 2, *codes.shape[1:])  # [K/2, 2, N]
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """uint8 [K // 2, N] -> uint8 [K, N], the inverse of pack_nibbles."""
    pairs = jnp.stack([packed & 0xF, packed >> 4], axis=1)  # [K/2, 2, N]
    return pairs.reshape(-1, *packed.shape[1:])


def _quantize_scales(scales: jax.Array):
    """float32 [G, N] -> (int8 [blocks, SCALE_BLOCK], float32 [blocks], float32 []); zero-padded."""
    flat = scales.reshape(-1)
    offset = jnp.mean(flat)
    pad = -flat.size % SCALE_BLOCK
    blocks = jnp.pad(flat - offset, (0, pad)).reshape(-1, SCALE_BLOCK)  # [blocks, 256]
    block_scale = jnp.max(jnp.abs(blocks), axis=1) / 127
    q = jnp.round(blocks / jnp.where(block_scale == 0, 1, block_scale)[:, None])
    return jnp.clip(q, -127, 127).astype(jnp.int8), block_scale, offset


def _dequantize_scales(q: QTensor) -> jax.Array:
    k, n = q.matrix_shape
    if q.scale_scales is None:
        return q.scales
    flat = (q.scales.astype(jnp.float32) * q.scale_scales[:, None]).reshape(-1)[: (k // q.group_size) * n]
    return flat.reshape(k // q.group_size, n) + q.scale_offset


def quantize(
    w: jax.Array,
    format: str,
    *,
    group_size: int = -1,
    contract_axes=(0,),
    double_quant: bool = False,
    name: str = "weight",
) -> QTensor:
    """Quantizes a float weight; `name` only labels error messages (e.g. the parameter path)."""
    axes = _check_axes(w.shape, contract_axes, name)
    k = math.prod(w.shape[a] for a in axes)
    g = _check_group(format, group_size, k, name)
    return _quantize(jnp.asarray(w), format, g, axes, double_quant)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _quantize(w, format, g, axes, double_quant) -> QTensor:
    perm = axes + tuple(a for a in range(w.ndim) if a not in axes)
    k = math.prod(w.shape[a] for a in axes)
    m = jnp.transpose(w, perm).reshape(k, -1).astype(jnp.float32)  # [K, N]
    groups = m.reshape(k // g, g, -1)  # [K/g, g, N]
    absmax = jnp.max(jnp.abs(groups), axis=1)  # [K/g, N]
    if format == "nf4":
        scales = absmax
        x = groups / jnp.where(scales == 0, 1, scales)[:, None, :]  # in [-1, 1]
        codes = jnp.searchsorted(jnp.asarray(NF4_MIDPOINTS), x).astype(jnp.uint8)  # nearest NF4 index
    else:
        qmax = QMAX[format]
        scales = absmax / qmax
        q = jnp.clip(jnp.round(groups / jnp.where(scales == 0, 1, scales)[:, None, :]), -qmax, qmax)
        codes = q.astype(jnp.int8) if format == "int8" else (q + 8).astype(jnp.uint8)  # int4: offset to 1..15
    codes = codes.reshape(k, -1)  # [K, N]
    if BITS[format] == 4:
        codes = pack_nibbles(codes)  # [K/2, N]
    scale_scales = scale_offset = None
    if double_quant:
        scales, scale_scales, scale_offset = _quantize_scales(scales)
    return QTensor(
        codes=codes,
        scales=scales,
        scale_scales=scale_scales,
        scale_offset=scale_offset,
        format=format,
        group_size=g,
        shape=tuple(w.shape),
        contract_axes=axes,
        dtype=jnp.dtype(w.dtype).name,
    )


def dequantized_matrix(q: QTensor) -> jax.Array:
    """The float32 [K, N] matrix the codes and scales stand for."""
    k, n = q.matrix_shape
    if q.format == "int8":
        values = q.codes.astype(jnp.float32)
    else:
        codes = unpack_nibbles(q.codes)  # [K, N]
        if q.format == "nf4":
            values = jnp.asarray(NF4)[codes.astype(jnp.int32)]
        else:
            values = codes.astype(jnp.float32) - 8
    scales = _dequantize_scales(q)  # [K/g, N]
    return (values.reshape(k // q.group_size, q.group_size, n) * scales[:, None, :]).reshape(k, n)


@jax.jit
def dequantize(q: QTensor) -> jax.Array:
    """The float weight (shape and dtype of the original) the quantized one stands for."""
    permuted = tuple(q.shape[a] for a in q.perm)
    inverse = tuple(np.argsort(q.perm))
    return jnp.transpose(dequantized_matrix(q).reshape(permuted), inverse).astype(q.dtype)
