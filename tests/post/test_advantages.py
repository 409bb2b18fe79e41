"""GAE over each row's response tokens, whitening, GRPO group advantages and explained variance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.post.advantages import explained_variance, gae, group_advantages, whiten


def _ref_gae(rewards, values, mask, gamma, lam):
    """Per row: walk the masked positions backwards; V = A = 0 after the last one."""
    adv, ret = np.zeros(rewards.shape), np.zeros(rewards.shape)
    for i in range(rewards.shape[0]):
        positions = np.flatnonzero(mask[i])
        next_value, next_adv = 0.0, 0.0
        for t in positions[::-1]:
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            adv[i, t] = delta + gamma * lam * next_adv
            ret[i, t] = adv[i, t] + values[i, t]
            next_value, next_adv = values[i, t], adv[i, t]
    return adv, ret


def _rollout(seed, b=5, length=12):
    """Rows whose responses start at different offsets, with different lengths, one ending at the last column.

    Values and rewards outside the mask are random too, so anything that leaks in shows.
    """
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(b, length)).astype(np.float32)
    values = rng.normal(size=(b, length)).astype(np.float32)
    mask = np.zeros((b, length), bool)
    spans = [(2, 5), (0, length), (length - 3, 3), (5, 1), (1, 8)]
    for i in range(b):
        start, n = spans[i % len(spans)]
        mask[i, start : start + n] = True
    return rewards, values, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (1.0, 0.95), (0.9, 1.0)])
def test_gae_matches_a_per_row_backwards_loop(seed, gamma, lam):
    rewards, values, mask = _rollout(seed, b=5 + seed)
    adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=gamma, lam=lam)
    ref_adv, ref_ret = _ref_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[~mask] == 0) and np.all(np.asarray(ret)[~mask] == 0)


def test_gae_by_hand_terminal_value_is_zero():
    # One response at columns 1..2 (column 3 is padding with a large value that must not be bootstrapped).
    # gamma = lam = 1: A_2 = r_2 - V_2 = 1 - 0.5 = 0.5; A_1 = r_1 + V_2 - V_1 + A_2 = 0 + 0.5 - 0.25 + 0.5 = 0.75.
    # Returns: Monte Carlo sums of future rewards, [1, 1].
    rewards = jnp.array([[9.0, 0.0, 1.0, 9.0]])
    values = jnp.array([[9.0, 0.25, 0.5, 100.0]])
    mask = jnp.array([[False, True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[0.0, 0.75, 0.5, 0.0]])
    np.testing.assert_allclose(ret, [[0.0, 1.0, 1.0, 0.0]])
    # lam = 0: one-step TD errors. A_2 = 1 - 0.5, A_1 = 0 + 0.9 * 0.5 - 0.25.
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv, [[0.0, 0.2, 0.5, 0.0]], rtol=1e-6)


def test_gae_accepts_a_float_mask_and_all_masked_out_rows():
    rewards, values, mask = _rollout(4)
    mask[0] = False
    adv_b, ret_b = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    adv_f, ret_f = gae(rewards, values, mask.astype(np.float32), gamma=0.9, lam=0.95)
    np.testing.assert_array_equal(adv_b, adv_f)
    np.testing.assert_array_equal(ret_b, ret_f)
    assert np.all(np.asarray(adv_b)[0] == 0)


def _ref_whiten(x, mask, shift_mean, eps):
    sel = x[mask].astype(np.float64)
    mean, var = sel.mean(), sel.var()
    out = (x - mean) / np.sqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return np.where(mask, out, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_numpy(seed, shift_mean):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(4, 9)) * 3 + 5).astype(np.float32)
    mask = rng.random((4, 9)) > 0.3
    out = whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=shift_mean)
    np.testing.assert_allclose(out, _ref_whiten(x, mask, shift_mean, 1e-8), rtol=1e-5, atol=1e-5)
    sel = np.asarray(out)[mask]
    np.testing.assert_allclose(sel.std(), 1.0, rtol=1e-4)
    if shift_mean:
        np.testing.assert_allclose(sel.mean(), 0.0, atol=1e-5)
    else:
        np.testing.assert_allclose(sel.mean(), x[mask].mean(), rtol=1e-4)


def _ref_group(rewards, group_size, eps, normalize_std):
    out = np.zeros(len(rewards))
    for g in range(len(rewards) // group_size):
        rows = slice(g * group_size, (g + 1) * group_size)
        r = rewards[rows].astype(np.float64)
        out[rows] = (r - r.mean()) / (r.std(ddof=1) + eps) if normalize_std else r - r.mean()
    return out


@pytest.mark.parametrize("seed,groups,group_size", [(0, 3, 4), (1, 1, 2), (2, 5, 8), (3, 2, 3)])
@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_match_numpy(seed, groups, group_size, normalize_std):
    rewards = np.random.default_rng(seed).normal(size=groups * group_size).astype(np.float32)
    got = group_advantages(jnp.asarray(rewards), group_size, normalize_std=normalize_std)
    np.testing.assert_allclose(got, _ref_group(rewards, group_size, 1e-6, normalize_std), rtol=1e-5, atol=1e-5)


def test_group_advantages_by_hand():
    # Groups are contiguous rows: [1, 2, 3] and [10, 20, 30]; ddof=1 stds 1 and 10.
    got = group_advantages(jnp.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), 3, eps=0.0)
    np.testing.assert_allclose(got, [-1, 0, 1, -1, 0, 1], rtol=1e-6)
    # Binary rewards [1, 0]: std (ddof=1) sqrt(0.5), so +-1/sqrt(2) (ddof=0 would give +-1).
    np.testing.assert_allclose(group_advantages(jnp.array([1.0, 0.0]), 2, eps=0.0), [0.5**0.5, -(0.5**0.5)])
    # A group whose rewards all agree carries no signal: 0, not nan.
    np.testing.assert_array_equal(group_advantages(jnp.array([1.0, 1.0, 0.0, 1.0]), 2)[:2], [0.0, 0.0])
    np.testing.assert_allclose(
        group_advantages(jnp.array([1.0, 2.0, 3.0, 10.0]), 2, normalize_std=False), [-0.5, 0.5, -3.5, 3.5]
    )


@pytest.mark.parametrize("n,group_size", [(4, 1), (4, 0), (6, 4), (5, 2)])
def test_group_advantages_bad_group_size_raises(n, group_size):
    with pytest.raises(ValueError, match="grpo.group_size"):
        group_advantages(jnp.zeros(n), group_size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_explained_variance_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    ret = rng.normal(size=(3, 8)).astype(np.float32)
    values = (ret + rng.normal(size=(3, 8)) * 0.5).astype(np.float32)
    values[0, 0] = 1e6  # outside the mask below: must not count
    mask = rng.random((3, 8)) > 0.3
    mask[0, 0] = False
    ref = 1.0 - np.var(ret[mask] - values[mask]) / np.var(ret[mask])
    np.testing.assert_allclose(explained_variance(values, ret, mask), ref, rtol=1e-5)


def test_explained_variance_conventions():
    ret = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    mask = jnp.ones((1, 4), bool)
    np.testing.assert_allclose(explained_variance(ret, ret, mask), 1.0)  # perfect critic
    np.testing.assert_allclose(explained_variance(ret + 7.0, ret, mask), 1.0)  # a constant offset is not variance
    np.testing.assert_allclose(explained_variance(jnp.full_like(ret, 2.5), ret, mask), 0.0)  # a constant guess
    # Constant returns or an empty mask: undefined, reported as 0.
    assert float(explained_variance(ret, jnp.ones_like(ret), mask)) == 0.0
    assert float(explained_variance(ret, ret, jnp.zeros_like(mask))) == 0.0


def test_jit_matches_eager():
    rewards, values, mask = (jnp.asarray(x) for x in _rollout(9))
    cases = [
        (functools.partial(gae, gamma=0.9, lam=0.95), (rewards, values, mask)),
        (functools.partial(whiten, shift_mean=False), (rewards, mask)),
        (whiten, (rewards, mask)),
        (functools.partial(group_advantages, group_size=3), (rewards.reshape(-1)[:12],)),
        (functools.partial(group_advantages, group_size=4, normalize_std=False), (rewards.reshape(-1)[:12],)),
        (explained_variance, (values, rewards, mask)),
    ]
    for fn, args in cases:
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), jax.jit(fn)(*args), fn(*args))
