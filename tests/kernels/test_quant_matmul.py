"""The fused 4-bit dequantize-matmul kernel (interpret mode) vs its reference and research.quant's layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.quant import NF4, quantize
from research_kernels.quant_matmul import Blocks, quant_matmul, reference

# float32 accumulation in a different order (per group, scale factored out) than the reference's
# single matmul: relative differences of a few float32 ulps of the output's magnitude.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt,group_size", [("int4", 32), ("nf4", 64), ("nf4", 128)])
def test_kernel_matches_reference_and_dequantized_matmul(fmt, group_size):
    k, n, m = 128, 64, 32
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(k, n)).astype(np.float32) * 0.05)
    x = jnp.asarray(rng.normal(size=(m, k)).astype(np.float32))
    q = quantize(w, fmt, group_size=group_size)
    codebook = tuple(float(v) for v in NF4) if fmt == "nf4" else None
    args = dict(format=fmt, group_size=group_size, codebook=codebook)
    got = quant_matmul(x, q.codes, q.scales, blocks=Blocks(block_m=16, block_n=32), interpret=True, **args)
    want = reference(x, q.codes, q.scales, **args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    # the same function as research.quant's dequantized weight times x
    via_quant = jnp.dot(x, q.dequantize(), precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(got), np.asarray(via_quant), **TOL)


def test_bad_shapes_are_named():
    x = jnp.ones((16, 64))
    codes = jnp.zeros((32, 32), jnp.uint8)
    with pytest.raises(ValueError, match="group_size=48 must be even and divide K=64"):
        quant_matmul(x, codes, jnp.ones((1, 32)), format="int4", group_size=48, interpret=True)
    with pytest.raises(ValueError, match="block_m=64"):
        quant_matmul(x, codes, jnp.ones((2, 32)), format="int4", group_size=32, interpret=True)
    with pytest.raises(ValueError, match="format='int8'"):
        quant_matmul(x, codes, jnp.ones((2, 32)), format="int8", group_size=32, interpret=True)


def test_kernel_lowers_through_triton_without_a_gpu():
    """The real Triton lowering (jit(...).trace(...).lower(lowering_platforms=("cuda",))) at GPU tile sizes."""
    m, k, n = 64, 256, 128
    x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    codes = jax.ShapeDtypeStruct((k // 2, n), jnp.uint8)
    scales = jax.ShapeDtypeStruct((k // 64, n), jnp.float32)
    fn = lambda x, c, s: quant_matmul(x, c, s, format="nf4", group_size=64, codebook=tuple(float(v) for v in NF4))  # noqa: E731
    text = jax.jit(fn).trace(x, codes, scales).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text
