import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.attention import dense_attention, get_attention, list_attention


def naive_attention(q, k, v, mask):
    """Per-head loops in numpy float64: the independent reference."""
    b, lq, h, d = q.shape
    groups = h // k.shape[2]
    out = np.zeros(q.shape, np.float64)
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi].astype(np.float64) @ k[bi, :, hi // groups].T.astype(np.float64) / np.sqrt(d)
            s = np.where(mask[bi], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[bi, :, hi] = p @ v[bi, :, hi // groups]
    return out


def _qkv(heads, kv_heads, length=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, length, heads, d)).astype(np.float32)
    k = rng.standard_normal((2, length, kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((2, length, kv_heads, d)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_dense_matches_naive_causal_with_segments(heads, kv_heads):
    q, k, v = _qkv(heads, kv_heads)
    seg = np.array([[1] * 5 + [2] * 7, [1] * 10 + [0] * 2], np.int32)
    causal = np.tril(np.ones((12, 12), bool))
    mask = causal[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    # Padding queries (segment 0) see nothing; their output is unspecified, so compare real rows only.
    mask_for_ref = mask | ~(seg[:, :, None] != 0)
    out = dense_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True, segment_ids=jnp.asarray(seg))
    ref = naive_attention(q, k, v, mask_for_ref)
    real = seg != 0
    # float32 logits/softmax vs float64 reference: errors ~1e-6; 1e-5 leaves headroom.
    np.testing.assert_allclose(np.asarray(out)[real], ref[real], atol=1e-5, rtol=1e-5)


def test_gqa_with_kv_heads_equal_heads_is_mha_and_repeated_kv_matches():
    q, k, v = _qkv(4, 2)
    gqa = dense_attention(q, k, v, causal=True)
    # GQA == MHA whose k/v heads are each repeated for their group of query heads.
    mha = dense_attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), causal=True)
    np.testing.assert_allclose(gqa, mha, atol=1e-6)
    q, k, v = _qkv(4, 4)
    mask = np.broadcast_to(np.tril(np.ones((12, 12), bool)), (2, 12, 12))
    np.testing.assert_allclose(dense_attention(q, k, v, causal=True), naive_attention(q, k, v, mask), atol=1e-5)


def test_explicit_mask_equals_causal_flag():
    q, k, v = _qkv(2, 2)
    causal = jnp.tril(jnp.ones((12, 12), bool))[None, None]
    np.testing.assert_allclose(dense_attention(q, k, v, mask=causal), dense_attention(q, k, v, causal=True), atol=1e-6)


def test_gradients_finite_with_fully_masked_rows():
    q, k, v = _qkv(2, 2)
    seg = jnp.zeros((2, 12), jnp.int32)  # everything is padding
    g = jax.grad(lambda q: dense_attention(q, k, v, causal=True, segment_ids=seg).sum())(jnp.asarray(q))
    assert np.isfinite(np.asarray(g)).all()


def test_registry_names_and_errors():
    assert "dense" in list_attention()
    assert get_attention("dense") is dense_attention
    with pytest.raises(ValueError, match="model.attention='nope'"):
        get_attention("nope")
    q, k, v = _qkv(3, 2)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        dense_attention(q, k, v)
