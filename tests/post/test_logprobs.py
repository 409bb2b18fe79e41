"""Per-token log-probs and entropies (aligned with the tokens: column t belongs to token t) and masked reductions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.post.logprobs import masked_mean, masked_sum, sequence_logprobs, token_entropy, token_logprobs


def _inputs(seed, b=3, length=7, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, length, vocab)).astype(np.float32) * 3.0
    tokens = rng.integers(0, vocab, size=(b, length)).astype(np.int32)
    return logits, tokens


def _log_softmax(row):
    row = np.asarray(row, np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def _ref_logprobs(logits, tokens, temperature):
    b, length, _ = logits.shape
    out = np.zeros((b, length))
    for i in range(b):
        for t in range(1, length):
            out[i, t] = _log_softmax(logits[i, t - 1] / temperature)[tokens[i, t]]
    return out


def _ref_entropy(logits, temperature):
    b, length, _ = logits.shape
    out = np.zeros((b, length))
    for i in range(b):
        for t in range(1, length):
            logp = _log_softmax(logits[i, t - 1] / temperature)
            out[i, t] = -(np.exp(logp) * logp).sum()
    return out


@pytest.mark.parametrize("seed,shape", [(0, (3, 7, 11)), (1, (1, 2, 5)), (2, (4, 16, 33))])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_logprobs_and_entropy_match_a_numpy_loop(seed, shape, temperature):
    logits, tokens = _inputs(seed, *shape)
    lp = token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), temperature=temperature)
    ent = token_entropy(jnp.asarray(logits), temperature=temperature)
    assert lp.shape == tokens.shape and lp.dtype == jnp.float32 and ent.shape == tokens.shape
    np.testing.assert_allclose(lp, _ref_logprobs(logits, tokens, temperature), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, _ref_entropy(logits, temperature), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(lp)[:, 0] == 0) and np.all(np.asarray(ent)[:, 0] == 0)


def test_alignment_by_hand():
    # Position 0 is certain of token 2 and position 1 of token 0, so tokens [*, 2, 0]
    # have log-prob ~0 and [*, 0, 2] have ~-100: an off-by-one would swap them.
    logits = np.full((1, 3, 3), -100.0, np.float32)
    logits[0, 0, 2] = logits[0, 1, 0] = 0.0
    good = token_logprobs(jnp.asarray(logits), jnp.array([[1, 2, 0]]))
    bad = token_logprobs(jnp.asarray(logits), jnp.array([[1, 0, 2]]))
    np.testing.assert_allclose(good, [[0.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(bad, [[0.0, -100.0, -100.0]], rtol=1e-5)
    # Uniform logits: entropy log V for every predicted token.
    np.testing.assert_allclose(token_entropy(jnp.zeros((2, 4, 5))), np.log(5) * np.array([[0, 1, 1, 1]] * 2), atol=1e-6)


def test_bf16_logits_give_float32_and_banned_tokens_do_not_make_nan():
    logits, tokens = _inputs(3)
    logits[:, :, 0] = -np.inf  # token 0 banned everywhere
    tokens = np.maximum(tokens, 1)
    lp = token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens))
    assert lp.dtype == jnp.float32 and np.all(np.isfinite(lp))
    ent = token_entropy(jnp.asarray(logits))
    assert np.all(np.isfinite(ent))
    np.testing.assert_allclose(ent, _ref_entropy(logits[..., 1:], 1.0), rtol=1e-5, atol=1e-5)


def test_bad_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32), temperature=0.0)


def test_masked_sum_and_mean():
    x = np.array([[1.0, 2.0, np.inf], [4.0, np.nan, 6.0]], np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(masked_sum(x, mask), 3.0)
    np.testing.assert_allclose(masked_sum(x, mask, axis=-1), [3.0, 0.0])
    np.testing.assert_allclose(masked_mean(x, mask), 1.5)
    mean_rows = np.asarray(masked_mean(x, mask, axis=-1))
    np.testing.assert_array_equal(mean_rows, [1.5, 0.0])  # empty row: 0, not nan
    assert float(masked_mean(x, np.zeros_like(mask))) == 0.0
    # A float mask weighs the entries.
    w = np.array([[0.5, 1.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    np.testing.assert_allclose(masked_sum(x, w), 0.5 + 2.0 + 12.0)
    np.testing.assert_allclose(masked_mean(x, w), (0.5 + 2.0 + 12.0) / 3.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequence_logprobs_sum_the_masked_tokens(seed):
    logits, tokens = _inputs(seed, b=4, length=9)
    rng = np.random.default_rng(100 + seed)
    mask = np.zeros(tokens.shape, bool)
    for i in range(4):
        start = rng.integers(1, 6)
        mask[i, start : start + rng.integers(1, 9 - start + 1)] = True
    ref = _ref_logprobs(logits, tokens, 1.3)
    expected = [ref[i][mask[i]].sum() for i in range(4)]
    got = sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask), temperature=1.3)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_jit_matches_eager():
    logits, tokens = (jnp.asarray(a) for a in _inputs(5))
    mask = jnp.asarray(np.random.default_rng(5).random(tokens.shape) > 0.4)
    cases = [
        (functools.partial(token_logprobs, temperature=0.8), (logits, tokens)),
        (functools.partial(token_entropy, temperature=0.8), (logits,)),
        (functools.partial(sequence_logprobs, temperature=0.8), (logits, tokens, mask)),
        (masked_sum, (logits[..., 0], mask)),
        (masked_mean, (logits[..., 0], mask)),
        (functools.partial(masked_mean, axis=-1), (logits[..., 0], mask)),
    ]
    for fn, args in cases:
        np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-6)
