"""Bradley-Terry, DPO/IPO, and PPO's clipped policy and value losses, against NumPy references and hand values."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.post.losses import bradley_terry_loss, dpo_loss, pair_accuracy, ppo_policy_loss, value_loss


def _softplus(x):
    return np.logaddexp(0.0, np.asarray(x, np.float64))


def test_bradley_terry_by_hand():
    # r_c - r_r = [2, 0, -2]: log(1 + e^-2) = 0.126928, log 2 = 0.693147, log(1 + e^2) = 2.126928.
    r_c, r_r = jnp.array([2.0, 0.0, -1.0]), jnp.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(bradley_terry_loss(r_c, r_r), [0.1269280, 0.6931472, 2.1269280], rtol=1e-6)
    np.testing.assert_array_equal(pair_accuracy(r_c, r_r), [1.0, 0.5, 0.0])


def test_bradley_terry_is_stable_for_large_margins():
    loss = bradley_terry_loss(jnp.array([200.0, -200.0]), jnp.array([0.0, 0.0]))
    np.testing.assert_allclose(loss, [0.0, 200.0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bradley_terry_matches_the_definition(seed):
    r_c, r_r = np.random.default_rng(seed).normal(size=(2, 16)) * 3
    ref = -np.log(1.0 / (1.0 + np.exp(-(r_c - r_r))))
    np.testing.assert_allclose(bradley_terry_loss(jnp.asarray(r_c), jnp.asarray(r_r)), ref, rtol=1e-5)


def test_dpo_by_hand():
    # beta = 0.1; pi_c = -10, pi_r = -12, ref_c = ref_r = -11:
    # chosen reward 0.1 * (1) = 0.1, rejected 0.1 * (-1) = -0.1, margin 0.2, h = 2, beta h = 0.2.
    # sigmoid: softplus(-0.2) = log(1 + e^-0.2) = 0.5981389;
    # smoothed (eps 0.1): 0.9 * 0.5981389 + 0.1 * softplus(0.2) = 0.9 * 0.5981389 + 0.1 * 0.7981389 = 0.6181389;
    # ipo: (h - 1 / (2 beta))^2 = (2 - 5)^2 = 9.
    # Second pair, beta * h < 0: pi_c = -3, pi_r = -2, ref = -2.5 both: h = -1, softplus(0.1) = 0.7443967.
    args = [jnp.array(x) for x in ([-10.0, -3.0], [-12.0, -2.0], [-11.0, -2.5], [-11.0, -2.5])]
    losses, stats = dpo_loss(*args, beta=0.1)
    np.testing.assert_allclose(losses, [0.5981389, _softplus(0.1)], rtol=1e-6)
    np.testing.assert_allclose(stats["chosen_reward"], [0.1, -0.05], rtol=1e-5)
    np.testing.assert_allclose(stats["rejected_reward"], [-0.1, 0.05], rtol=1e-5)
    np.testing.assert_allclose(stats["margin"], [0.2, -0.1], rtol=1e-5)
    np.testing.assert_array_equal(stats["accuracy"], [1.0, 0.0])
    smoothed, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    np.testing.assert_allclose(smoothed[0], 0.6181389, rtol=1e-6)
    ipo, _ = dpo_loss(*args, beta=0.1, loss_type="ipo")
    np.testing.assert_allclose(ipo, [9.0, (-1 - 5) ** 2], rtol=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_dpo_at_the_reference(beta):
    logp = jnp.asarray(np.random.default_rng(0).normal(size=8) * 20 - 50, jnp.float32)
    logp_r = logp - 3.0
    losses, stats = dpo_loss(logp, logp_r, logp, logp_r, beta=beta)
    np.testing.assert_allclose(losses, math.log(2), rtol=1e-6)
    np.testing.assert_array_equal(stats["accuracy"], 0.5)
    np.testing.assert_allclose(stats["margin"], 0.0, atol=1e-6)
    ipo, _ = dpo_loss(logp, logp_r, logp, logp_r, beta=beta, loss_type="ipo")
    np.testing.assert_allclose(ipo, 1.0 / (4.0 * beta**2), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.1, 0.2), (1.0, 0.45)])
def test_dpo_matches_the_formula(seed, beta, eps):
    pc, pr, rc, rr = np.random.default_rng(seed).normal(size=(4, 10)) * 5 - 20
    h = (pc - rc) - (pr - rr)
    log_sig = lambda x: -_softplus(-x)
    ref = -(1 - eps) * log_sig(beta * h) - eps * log_sig(-beta * h)
    losses, stats = dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta=beta, label_smoothing=eps)
    np.testing.assert_allclose(losses, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["chosen_reward"], beta * (pc - rc), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(stats["accuracy"], (h > 0).astype(np.float32))


def test_dpo_gradient_flows_into_the_policy_only():
    pc, pr, rc, rr = (jnp.array([x]) for x in (-5.0, -6.0, -5.5, -5.5))
    grads = jax.grad(lambda *a: jnp.sum(dpo_loss(*a, beta=0.5)[0]), argnums=(0, 1, 2, 3))(pc, pr, rc, rr)
    # d/d pi_c softplus(-beta h) = -beta * sigmoid(-beta h), with h = 1.
    expected = -0.5 / (1 + math.exp(0.5))
    np.testing.assert_allclose(grads[0], [expected], rtol=1e-6)
    np.testing.assert_allclose(grads[1], [-expected], rtol=1e-6)
    np.testing.assert_array_equal(grads[2], [0.0])
    np.testing.assert_array_equal(grads[3], [0.0])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"beta": 0.0}, "dpo.beta"),
        ({"beta": -1.0}, "dpo.beta"),
        ({"beta": 0.1, "loss_type": "hinge"}, "dpo.loss_type"),
        ({"beta": 0.1, "label_smoothing": 0.5}, "dpo.label_smoothing"),
        ({"beta": 0.1, "label_smoothing": -0.1}, "dpo.label_smoothing"),
        ({"beta": 0.1, "loss_type": "ipo", "label_smoothing": 0.1}, "dpo.label_smoothing"),
    ],
)
def test_dpo_bad_config_raises_naming_the_field(kwargs, field):
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match=field) as info:
        dpo_loss(x, x, x, x, **kwargs)
    if field == "dpo.loss_type":
        assert "sigmoid" in str(info.value) and "ipo" in str(info.value)


def _ref_ppo(logp, old, adv, eps):
    loss, clipped = np.zeros(logp.shape), np.zeros(logp.shape)
    for idx in np.ndindex(logp.shape):
        ratio = math.exp(logp[idx] - old[idx])
        a = adv[idx]
        loss[idx] = -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
        if a > 0 and ratio > 1 + eps:
            clipped[idx] = 1.0
        elif a < 0 and ratio < 1 - eps:
            clipped[idx] = 1.0
    return loss, clipped


@pytest.mark.parametrize("seed,shape", [(0, (4, 9)), (1, (2, 33)), (2, (1, 5))])
@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_ppo_policy_loss_matches_a_numpy_loop(seed, shape, eps):
    rng = np.random.default_rng(seed)
    old = rng.normal(size=shape) - 2
    logp = old + rng.normal(size=shape) * 0.3  # ratios on both sides of the clip range
    adv = rng.normal(size=shape)
    loss, clipped = ppo_policy_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, adv)), clip_eps=eps)
    ref_loss, ref_clipped = _ref_ppo(logp, old, adv, eps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clipped, ref_clipped)
    assert 0 < ref_clipped.mean() < 1 or shape == (1, 5)


def test_ppo_by_hand_and_the_clipped_tokens_have_zero_gradient():
    eps = 0.2
    ratio = np.array([[1.5, 1.5, 0.5, 0.5, 1.1, 0.9]])
    adv = np.array([[1.0, -1.0, 1.0, -1.0, 2.0, -2.0]])
    # ratio 1.5, A 1: min(1.5, 1.2) = 1.2 (clipped); A -1: min(-1.5, -1.2) = -1.5 (not clipped);
    # ratio 0.5, A 1: min(0.5, 0.8) = 0.5; A -1: min(-0.5, -0.8) = -0.8 (clipped); inside the range: ratio * A.
    old = np.zeros_like(ratio)
    logp = jnp.asarray(np.log(ratio), jnp.float32)
    loss, clipped = ppo_policy_loss(logp, jnp.asarray(old), jnp.asarray(adv), clip_eps=eps)
    np.testing.assert_allclose(loss, [[-1.2, 1.5, -0.5, 0.8, -2.2, 1.8]], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [[1, 0, 0, 1, 0, 0]])
    grad = jax.grad(lambda lp: jnp.sum(ppo_policy_loss(lp, old, adv, clip_eps=eps)[0]))(logp)
    # d(-ratio A)/d logp = -ratio A where unclipped, 0 where clipped.
    np.testing.assert_allclose(grad, np.where(clipped, 0.0, -ratio * adv), rtol=1e-6)


def test_ppo_sequence_advantages_broadcast_over_tokens():
    rng = np.random.default_rng(3)
    old = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    logp = old + jnp.asarray(rng.normal(size=(3, 6)) * 0.3, jnp.float32)
    adv = jnp.array([1.0, -0.5, 2.0])
    per_seq = ppo_policy_loss(logp, old, adv, clip_eps=0.2)
    per_tok = ppo_policy_loss(logp, old, jnp.broadcast_to(adv[:, None], (3, 6)), clip_eps=0.2)
    for a, b in zip(per_seq, per_tok, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_ppo_bad_clip_raises(eps):
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_policy_loss(x, x, x, clip_eps=eps)


def _ref_value(v, old, ret, eps):
    loss, clipped = np.zeros(v.shape), np.zeros(v.shape)
    for idx in np.ndindex(v.shape):
        plain = (v[idx] - ret[idx]) ** 2
        if not eps:
            loss[idx] = 0.5 * plain
            continue
        vc = old[idx] + min(max(v[idx] - old[idx], -eps), eps)
        clip_sq = (vc - ret[idx]) ** 2
        loss[idx] = 0.5 * max(plain, clip_sq)
        clipped[idx] = float(clip_sq > plain)
    return loss, clipped


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [None, 0.0, 0.2, 1.0])
def test_value_loss_matches_a_numpy_loop(seed, eps):
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(4, 10))
    v = old + rng.normal(size=(4, 10)) * 0.5
    ret = rng.normal(size=(4, 10))
    loss, clipped = value_loss(*(jnp.asarray(x, jnp.float32) for x in (v, old, ret)), clip_eps=eps)
    ref_loss, ref_clipped = _ref_value(v, old, ret, eps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clipped, ref_clipped)
    if eps == 0.2:
        assert 0 < ref_clipped.mean() < 1


def test_value_loss_by_hand():
    # old 0, v 1, R 2, eps 0.2: plain (1 - 2)^2 = 1, clipped (0.2 - 2)^2 = 3.24 -> 0.5 * 3.24, clipped.
    # old 0, v 1, R 0: plain 1, clipped 0.04 -> 0.5, not clipped.
    loss, clipped = value_loss(jnp.array([1.0, 1.0]), jnp.array([0.0, 0.0]), jnp.array([2.0, 0.0]), clip_eps=0.2)
    np.testing.assert_allclose(loss, [1.62, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [1.0, 0.0])
    loss, clipped = value_loss(jnp.array([1.0]), jnp.array([0.0]), jnp.array([2.0]), clip_eps=None)
    np.testing.assert_allclose(loss, [0.5])
    np.testing.assert_array_equal(clipped, [0.0])


def test_jit_matches_eager():
    rng = np.random.default_rng(7)
    a, b, c, d = (jnp.asarray(x, jnp.float32) for x in rng.normal(size=(4, 5, 6)))
    cases = [
        (bradley_terry_loss, (a[0], b[0])),
        (pair_accuracy, (a[0], b[0])),
        (functools.partial(dpo_loss, beta=0.1, label_smoothing=0.1), (a[0], b[0], c[0], d[0])),
        (functools.partial(dpo_loss, beta=0.1, loss_type="ipo"), (a[0], b[0], c[0], d[0])),
        (functools.partial(ppo_policy_loss, clip_eps=0.2), (a, a + 0.3 * b, c)),
        (functools.partial(ppo_policy_loss, clip_eps=0.2), (a, a + 0.3 * b, c[:, 0])),
        (functools.partial(value_loss, clip_eps=0.2), (a, a + 0.3 * b, c)),
        (functools.partial(value_loss, clip_eps=None), (a, a + 0.3 * b, c)),
    ]
    for fn, args in cases:
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), jax.jit(fn)(*args), fn(*args))
