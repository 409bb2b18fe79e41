"""Encoder-only model: bidirectionality, padding masks, pooling, heads; the T5 relative bias and the
additive attention bias it rides on, each against a slow reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.attention import cached_attention, dense_attention
from research.layers import RelativePositionBias
from research.layers.relative_position import relative_position_bias_reference
from research.models.encoder import EncoderConfig, EncoderModel, init_params

TINY = dict(vocab_size=53, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=24)


def build(**overrides):
    """(model, params, jitted apply): whole-model compiles are faster than op-by-op dispatch on CPU."""
    model = EncoderModel(EncoderConfig(**{**TINY, **overrides}))
    params = nn.unbox(init_params(model, jax.random.key(0)))
    run = jax.jit(lambda tokens, **kw: model.apply({"params": params}, tokens, **kw), static_argnames="head")
    return model, params, run


@pytest.mark.parametrize(
    "overrides",
    [
        dict(position="relative", norm="rmsnorm", ffn="geglu"),  # T5-style encoder
        dict(position="learned", post_norm=True, use_bias=True, type_vocab_size=2, ffn="gelu_exact"),  # BERT
        dict(position="rope", ffn="swiglu"),
    ],
)
def test_bidirectional_and_padding_invariant(overrides):
    model, params, run = build(**overrides)
    tokens = jax.random.randint(jax.random.key(1), (1, 10), 1, 53)
    hidden = run(tokens, head="hidden")
    changed = run(tokens.at[:, 8].set(tokens[:, 8] % 52 + 1), head="hidden")
    assert np.abs(np.asarray(hidden - changed)[:, :8]).max() > 1e-4  # earlier positions see a later token
    padded = jnp.pad(tokens, ((0, 0), (0, 6)))  # pad id 0
    mask = jnp.pad(jnp.ones_like(tokens), ((0, 0), (0, 6)))
    out = run(padded, segment_ids=mask, head="hidden")
    np.testing.assert_allclose(out[:, :10], hidden, atol=2e-5)  # padding changes nothing the real tokens see


def test_packed_documents_do_not_see_each_other():
    model, params, run = build(position="relative")
    tokens = jax.random.randint(jax.random.key(2), (1, 14), 1, 53)
    seg = jnp.array([[1] * 5 + [2] * 9])
    pos = jnp.array([list(range(5)) + list(range(9))])
    packed = run(tokens, segment_ids=seg, positions=pos, head="hidden")
    alone = run(tokens[:, 5:], head="hidden")
    np.testing.assert_allclose(packed[:, 5:], alone, atol=2e-5)


def test_pooling_heads():
    model, params, run = build(pooling="mean", num_labels=3)
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 1, 53)
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
    out = run(tokens, segment_ids=mask, head="all")
    h = np.asarray(out["hidden"])
    np.testing.assert_allclose(out["embed"][0], h[0].mean(0), atol=1e-6)
    np.testing.assert_allclose(out["embed"][1], h[1, :5].mean(0), atol=1e-6)  # padding excluded
    assert out["classify"].shape == (2, 3) and out["mlm"].shape == (2, 8, 53)
    p = params["pooler"]
    np.testing.assert_allclose(out["pooled"], np.tanh(h[:, 0] @ p["kernel"] + p["bias"]), atol=1e-5)
    cls_model = EncoderModel(EncoderConfig(**{**TINY, "pooling": "cls"}))
    np.testing.assert_allclose(
        cls_model.apply({"params": params}, tokens, segment_ids=mask, head="embed"), h[:, 0], atol=1e-5
    )


def test_bad_input_is_named():
    model, params, run = build()
    with pytest.raises(ValueError, match="segment_ids"):
        model.apply({"params": params}, jnp.array([[5, 6, 0, 0]]), head="hidden")  # padding without a mask
    with pytest.raises(ValueError, match="head='nsp'"):
        model.apply({"params": params}, jnp.array([[5, 6]]), head="nsp")
    with pytest.raises(ValueError, match="model.pooling"):
        build(pooling="max")


def test_logical_axis_names_on_every_param():
    model = EncoderModel(EncoderConfig(**TINY, type_vocab_size=2, use_bias=True, position="relative"))
    boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape) for x in leaves)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_matches_slow_reference(bidirectional):
    module = RelativePositionBias(num_heads=3, num_buckets=16, max_distance=40, bidirectional=bidirectional)
    q, k = jnp.array([[0, 3, 17, 60]]), jnp.arange(70)[None]
    params = module.init(jax.random.key(0), q, k)
    got = np.asarray(module.apply(params, q, k))[0]
    table = np.asarray(nn.unbox(params)["params"]["embedding"])
    want = relative_position_bias_reference(
        [0, 3, 17, 60], list(range(70)), table, bidirectional=bidirectional, max_distance=40
    )
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))


def test_attention_bias_matches_naive_reference():
    rng = np.random.default_rng(0)
    b, q_len, kv_len, heads, kv_heads, d = 2, 5, 7, 4, 2, 8
    q = jnp.asarray(rng.standard_normal((b, q_len, heads, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, kv_len, kv_heads, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, kv_len, kv_heads, d)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((1, heads, q_len, kv_len)), jnp.float32)
    kr, vr = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)  # head h uses kv head h // 2
    logits = np.einsum("bqhd,bkhd->bhqk", q, kr) / np.sqrt(d) + bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), vr)
    np.testing.assert_allclose(dense_attention(q, k, v, bias=bias), want, atol=1e-5)
    mask = jnp.ones((b, 1, q_len, kv_len), bool)
    got = cached_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, bias=bias)
    np.testing.assert_allclose(got, want, atol=1e-5)
