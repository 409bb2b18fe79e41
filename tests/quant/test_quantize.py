"""Quantize -> dequantize within each format's error bound, the NF4 codebook, packing and memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.quant import NF4, NF4_MAX_HALF_GAP, normal_float_codebook, pack_nibbles, quantize, unpack_nibbles
from research.quant.tensor import SCALE_BLOCK

# The NF4 values as published in QLoRA (Appendix E) and bitsandbytes' `create_normal_map`.
# They come from torch.linspace in float32, so they agree with the float64 derivation to ~1e-7.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def _weights(shape, seed=0):
    # Heavy-ish tails plus one outlier per matrix: what absmax scaling has to cope with.
    w = np.random.default_rng(seed).standard_t(5.0, shape).astype(np.float32) * 0.02
    w[(0,) * len(shape)] = 0.3
    return jnp.asarray(w)


def test_nf4_codebook_matches_published_values():
    assert NF4.shape == (16,) and np.all(np.diff(NF4) > 0)
    np.testing.assert_allclose(NF4, PUBLISHED_NF4, atol=1e-6, rtol=0)
    assert (NF4 > 0).sum() == 8 and (NF4 < 0).sum() == 7 and 0.0 in NF4
    # A 3-bit normal float code: same recipe, other size, still in [-1, 1] with an exact zero.
    nf3 = normal_float_codebook(3)
    assert nf3.shape == (8,) and nf3[0] == -1 and nf3[-1] == 1 and 0.0 in nf3


def _group_absmax(w, g):
    """absmax of each group of g consecutive rows of the [K, N] matrix w: [K // g, N]."""
    k, n = w.shape
    return np.abs(np.asarray(w)).reshape(k // g, g, n).max(axis=1)


@pytest.mark.parametrize("fmt,qmax", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("group_size", [-1, 32])
def test_integer_error_within_half_a_step(fmt, qmax, group_size):
    w = _weights((128, 48))
    q = quantize(w, fmt, group_size=group_size)
    g = 128 if group_size == -1 else group_size
    step = _group_absmax(w, g) / qmax  # the scale: one code step
    err = np.abs(np.asarray(q.dequantize()) - np.asarray(w)).reshape(128 // g, g, 48)
    assert np.all(err <= step[:, None, :] / 2 * (1 + 1e-5) + 1e-12)
    assert q.dequantize().shape == w.shape and q.dequantize().dtype == w.dtype


def test_finer_groups_are_more_accurate():
    w = _weights((256, 64))
    errs = [float(jnp.mean(jnp.abs(quantize(w, "int4", group_size=g).dequantize() - w))) for g in (-1, 64, 16)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("group_size", [-1, 64])
def test_nf4_error_within_half_the_largest_gap(group_size):
    w = _weights((128, 40))
    g = 128 if group_size == -1 else group_size
    q = quantize(w, "nf4", group_size=group_size)
    err = np.abs(np.asarray(q.dequantize()) - np.asarray(w)).reshape(128 // g, g, 40)
    bound = NF4_MAX_HALF_GAP * _group_absmax(w, g)
    assert np.all(err <= bound[:, None, :] * (1 + 1e-5) + 1e-12)


def test_nf4_codes_are_the_nearest_codebook_values():
    """Reference: brute-force argmin over the 16 values of |w / absmax - code|."""
    w = _weights((64, 24), seed=3)
    q = quantize(w, "nf4", group_size=16)
    x = np.asarray(w).reshape(4, 16, 24) / _group_absmax(w, 16)[:, None, :]
    nearest = np.abs(x[..., None] - NF4).argmin(axis=-1).reshape(64, 24)
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(q.codes)), nearest)


@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
def test_double_quantization_bound(fmt):
    """Codes are picked with the true scale s, stored with s' (|s - s'| <= s2 / 2):
    |w - c s'| <= half_step * s + |c|max * s2 / 2."""
    w = _weights((256, 80), seed=1)  # 80 * 256 / 64 = 320 scales: two second-level blocks, one padded
    q = quantize(w, fmt, group_size=64, double_quant=True)
    assert q.scales.dtype == jnp.int8 and q.scales.shape == (2, SCALE_BLOCK) and q.scale_scales.shape == (2,)
    absmax = _group_absmax(w, 64)
    if fmt == "nf4":
        scale, half_step, max_code = absmax, NF4_MAX_HALF_GAP, 1.0
    else:
        qmax = {"int8": 127, "int4": 7}[fmt]
        scale, half_step, max_code = absmax / qmax, 0.5, qmax
    s2 = np.repeat(np.asarray(q.scale_scales), SCALE_BLOCK)[: scale.size].reshape(scale.shape)
    bound = half_step * scale + max_code * s2 / 2
    err = np.abs(np.asarray(q.dequantize()) - np.asarray(w)).reshape(4, 64, 80)
    assert np.all(err <= bound[:, None, :] * (1 + 1e-5) + 1e-12)
    if fmt == "int8":
        return  # |c| up to 127 magnifies the scale's error: double quantization is for 4-bit codes
    # where it costs little: within 10% of the single-level mean error
    single = quantize(w, fmt, group_size=64)
    assert float(jnp.mean(jnp.abs(q.dequantize() - w))) < 1.1 * float(jnp.mean(jnp.abs(single.dequantize() - w)))


def test_nibble_packing_layout_and_round_trip():
    codes = jax.random.randint(jax.random.key(0), (6, 5), 0, 16).astype(jnp.uint8)
    packed = pack_nibbles(codes)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 5)
    c = np.asarray(codes)
    np.testing.assert_array_equal(np.asarray(packed), c[0::2] + 16 * c[1::2])  # row 2i low, 2i + 1 high
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(packed)), c)


def test_packed_memory_in_bytes():
    k, n = 256, 96
    w = _weights((k, n))
    f32 = k * n * 4
    int8 = quantize(w, "int8", group_size=-1)
    assert int8.codes.dtype == jnp.int8 and int8.nbytes == k * n + n * 4
    for fmt in ("int4", "nf4"):
        q = quantize(w, fmt, group_size=64)
        assert q.codes.dtype == jnp.uint8 and q.codes.nbytes == k * n // 2
        assert q.nbytes == k * n // 2 + (k // 64) * n * 4
    dq = quantize(w, "nf4", group_size=64, double_quant=True)
    scales = (k // 64) * n  # 384 -> two blocks of 256 int8 values, two float32 block scales, one float32 mean
    blocks = -(-scales // SCALE_BLOCK)
    assert dq.nbytes == k * n // 2 + blocks * SCALE_BLOCK + blocks * 4 + 4
    assert dq.nbytes < f32 / 7  # 4.14 bits per weight instead of 32


def test_contraction_axes_layout():
    """Attention output [heads, head_dim, d_model] contracts (heads, head_dim): one scale
    per d_model column and group of rows of the flattened (heads, head_dim) axis."""
    w = _weights((4, 16, 8))
    q = quantize(w, "int4", group_size=32, contract_axes=(0, 1))
    assert q.matrix_shape == (64, 8) and q.scales.shape == (2, 8)
    step = _group_absmax(w.reshape(64, 8), 32) / 7
    err = np.abs(np.asarray(q.dequantize() - w)).reshape(2, 32, 8)
    assert np.all(err <= step[:, None, :] / 2 * (1 + 1e-5) + 1e-12)
    # An embedding [vocab, d] contracts its last axis: the codes are transposed, the result is not.
    e = _weights((10, 32))
    qe = quantize(e, "int8", contract_axes=(-1,))
    assert qe.matrix_shape == (32, 10) and qe.dequantize().shape == (10, 32)
    assert float(jnp.max(jnp.abs(qe.dequantize() - e))) < 0.3 / 127


def test_zero_weights_stay_zero():
    for fmt in ("int8", "int4", "nf4"):
        q = quantize(jnp.zeros((8, 4)), fmt)
        assert np.all(np.asarray(q.dequantize()) == 0)


def test_bad_input_names_the_field():
    w = jnp.ones((96, 8))
    with pytest.raises(ValueError, match="group_size=64 must divide parameter p's contraction dimension 96"):
        quantize(w, "int4", group_size=64, name="parameter p")
    with pytest.raises(ValueError, match="quant.format='fp3'"):
        quantize(w, "fp3")
    with pytest.raises(ValueError, match="must be even"):
        quantize(w, "nf4", group_size=3)
    with pytest.raises(ValueError, match="rank >= 2"):
        quantize(jnp.ones(8), "int8")
