"""Encoder-decoder model: cached generation against a no-cache reference, causality of the decoder,
encoder padding, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decode import generate_seq2seq
from research.models import DecoderLM, ModelConfig
from research.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, init_params, shift_right

TINY = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=24)


def build(**overrides):
    model = EncoderDecoder(EncoderDecoderConfig(**{**TINY, **overrides}))
    return model, nn.unbox(init_params(model, jax.random.key(0)))


@pytest.mark.parametrize(
    "overrides",
    [dict(position="relative", norm="rmsnorm", ffn="relu"), dict(position="learned", tie_embeddings=False)],
)
def test_cached_generation_equals_full_recompute(overrides):
    """The decode path (encoder once, KV and cross-attention caches) against the slow reference:
    re-running the whole model on the growing decoder input for every new token."""
    model, params = build(**overrides)
    inputs = [[5, 9, 3, 22, 7], [11, 2, 30]]
    got = generate_seq2seq(model, params, inputs, max_new_tokens=8)
    x = jnp.array([[5, 9, 3, 22, 7], [11, 2, 30, 0, 0]])
    mask = jnp.array([[1] * 5, [1, 1, 1, 0, 0]])
    full = jax.jit(lambda dec: model.apply({"params": params}, x, dec, input_segment_ids=mask))
    dec = np.full((2, 9), model.config.decoder_start_id)  # one shape, one compile: later slots can't affect
    for t in range(8):  # earlier positions of a causal decoder, so position t's logits are the prefix's
        dec[:, t + 1] = np.argmax(full(dec)[:, t], axis=-1)
    assert got == dec[:, 1:].tolist()


def test_decoder_is_causal_and_encoder_padding_is_ignored():
    model, params = build(position="relative")
    inputs = jax.random.randint(jax.random.key(1), (1, 9), 1, 37)
    targets = shift_right(jax.random.randint(jax.random.key(2), (1, 10), 1, 37), 0)
    run = jax.jit(lambda i, t, **kw: model.apply({"params": params}, i, t, **kw))
    a = run(inputs, targets)
    b = run(inputs, targets.at[:, 6].set(targets[:, 6] % 36 + 1))
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert np.abs(np.asarray(a[:, 6:] - b[:, 6:])).max() > 1e-4
    padded = jnp.pad(inputs, ((0, 0), (0, 5)))
    mask = jnp.pad(jnp.ones_like(inputs), ((0, 0), (0, 5)))
    c = run(padded, targets, input_segment_ids=mask)
    np.testing.assert_allclose(c, a, atol=2e-5)
    with pytest.raises(ValueError, match="input_segment_ids"):
        model.apply({"params": params}, padded, targets)  # padding without its mask


def test_logical_axis_names_on_every_param():
    model = EncoderDecoder(EncoderDecoderConfig(**TINY, position="relative", tie_embeddings=False))
    boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape) for x in leaves)
    assert "cross_attn" in boxed["decoder"]["block_1"] and "rel_bias" in boxed["encoder"]


def test_relative_positions_are_refused_where_unsupported():
    with pytest.raises(ValueError, match="model.position='relative'"):
        DecoderLM(ModelConfig(**TINY, position="relative")).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
