"""Per-token KL estimators (k1, k2, k3) and the adaptive KL coefficient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.post.kl import kl_per_token, update_kl_coef


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_all_estimators_are_zero_at_the_reference(kind):
    logp = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)) - 3, jnp.float32)
    np.testing.assert_array_equal(kl_per_token(logp, logp, kind), 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimators_match_their_formulas_and_k2_k3_are_nonnegative(seed):
    rng = np.random.default_rng(seed)
    logp, ref = rng.normal(size=(2, 4, 9)) * 2 - 3
    d = ref - logp
    args = (jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32))
    np.testing.assert_allclose(kl_per_token(*args, "k1"), logp - ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl_per_token(*args, "k2"), 0.5 * d**2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl_per_token(*args, "k3"), np.exp(d) - d - 1, rtol=1e-4, atol=1e-5)
    assert np.any(np.asarray(kl_per_token(*args, "k1")) < 0)  # k1 alone can be negative
    assert np.all(np.asarray(kl_per_token(*args, "k2")) >= 0)
    assert np.all(np.asarray(kl_per_token(*args, "k3")) >= 0)


def test_k3_is_nonnegative_and_accurate_near_the_reference():
    logp = jnp.zeros(2001)
    ref = jnp.linspace(-1e-3, 1e-3, 2001)
    k3 = np.asarray(kl_per_token(logp, ref, "k3"))
    assert np.all(k3 >= 0)
    d = np.asarray(ref, np.float64)
    # Naive exp(d) - d - 1 in float32 is off by ~1e-7 here (the ulp of 1), as large as the value itself.
    np.testing.assert_allclose(k3, np.expm1(d) - d, rtol=1e-3, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_expectations_under_the_policy_on_a_small_categorical(seed):
    rng = np.random.default_rng(seed)
    log_p, log_q = _log_softmax(rng.normal(size=6)), _log_softmax(rng.normal(size=6))
    p = np.exp(log_p)
    true_kl = np.sum(p * (log_p - log_q))
    # Every outcome is a "sampled token"; weigh each estimate by its policy probability.
    args = (jnp.asarray(log_p[None], jnp.float32), jnp.asarray(log_q[None], jnp.float32))
    expect = {kind: float(np.sum(p * np.asarray(kl_per_token(*args, kind))[0])) for kind in ("k1", "k2", "k3")}
    np.testing.assert_allclose(expect["k1"], true_kl, rtol=1e-4)
    np.testing.assert_allclose(expect["k3"], true_kl, rtol=1e-4)
    assert expect["k2"] >= 0
    # Under the reference's probabilities k1 would give -KL(q || p): the weighting matters.
    assert not np.isclose(np.sum(np.exp(log_q) * (log_p - log_q)), true_kl, rtol=1e-2)


def test_unknown_kind_raises_listing_the_choices():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_per_token(jnp.zeros(2), jnp.zeros(2), "k4")


def test_jit_matches_eager():
    logp, ref = (jnp.asarray(x, jnp.float32) for x in np.random.default_rng(5).normal(size=(2, 3, 6)))
    for kind in ("k1", "k2", "k3"):
        fn = functools.partial(kl_per_token, kind=kind)
        np.testing.assert_allclose(jax.jit(fn)(logp, ref), fn(logp, ref), rtol=1e-6, atol=1e-7)


def test_kl_coef_moves_towards_the_target():
    kw = {"target": 6.0, "horizon": 10000, "n_steps": 256}
    up, down = update_kl_coef(0.2, 7.0, **kw), update_kl_coef(0.2, 5.0, **kw)
    assert up > 0.2 > down
    # error = 7/6 - 1 = 1/6 (inside the clip): 0.2 * (1 + (1/6) * 256 / 10000).
    np.testing.assert_allclose(up, 0.2 * (1 + (1 / 6) * 256 / 10000), rtol=1e-12)
    np.testing.assert_allclose(down, 0.2 * (1 - (1 / 6) * 256 / 10000), rtol=1e-12)
    assert update_kl_coef(0.2, 6.0, **kw) == 0.2
    assert isinstance(up, float)
    # A 0-d array from the device is accepted.
    np.testing.assert_allclose(update_kl_coef(0.2, jnp.array(7.0), **kw), up, rtol=1e-6)


def test_kl_coef_changes_by_at_most_20_percent_per_horizon():
    kw = {"target": 1.0, "horizon": 100, "n_steps": 100}
    assert update_kl_coef(1.0, 50.0, **kw) == pytest.approx(1.2)
    assert update_kl_coef(1.0, 1.2, **kw) == pytest.approx(1.2)
    assert update_kl_coef(1.0, 0.0, **kw) == pytest.approx(0.8)
    assert update_kl_coef(1.0, 1.1, **kw) == pytest.approx(1.1)
    assert update_kl_coef(1.0, 50.0, target=1.0, horizon=100, n_steps=10) == pytest.approx(1.02)


@pytest.mark.parametrize(
    "target,horizon,field",
    [(0.0, 10, "ppo.kl_target"), (-1.0, 10, "ppo.kl_target"), (1.0, 0, "ppo.kl_horizon"), (1.0, -5, "ppo.kl_horizon")],
)
def test_kl_coef_bad_config_raises(target, horizon, field):
    with pytest.raises(ValueError, match=field):
        update_kl_coef(0.1, 1.0, target=target, horizon=horizon, n_steps=1)
