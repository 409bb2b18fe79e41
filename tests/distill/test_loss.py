"""The distillation loss: KL(teacher || student) at temperature T, scaled by T^2, mixed with hard labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.distill import distillation_loss_sums, soft_kl


def _logits(seed, shape=(2, 5, 11), scale=3.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_is_zero_for_the_teacher_itself_and_positive_otherwise(temperature):
    t, s = _logits(0), _logits(1)
    np.testing.assert_allclose(soft_kl(t, t, temperature), 0.0, atol=1e-6)
    kl = np.asarray(soft_kl(s, t, temperature))
    # Reference: the definition, in float64 numpy.
    p, q = _softmax(np.asarray(t, np.float64) / temperature), _softmax(np.asarray(s, np.float64) / temperature)
    np.testing.assert_allclose(kl, (p * np.log(p / q)).sum(-1), rtol=1e-4, atol=1e-6)
    assert np.all(kl > 0)
    # A shift of the student's logits (same distribution) costs nothing.
    np.testing.assert_allclose(soft_kl(t + 7.0, t, temperature), 0.0, atol=1e-5)


def test_kl_survives_a_teacher_with_underflowing_probabilities():
    t = jnp.array([[0.0, -1e4, 5.0]])  # exp(-1e4) underflows to exactly 0
    s = jnp.array([[1.0, 2.0, 3.0]])
    assert np.isfinite(float(soft_kl(s, t)[0])) and float(soft_kl(t, t)[0]) == 0.0


@pytest.mark.parametrize("temperature,alpha", [(1.0, 1.0), (2.0, 1.0), (4.0, 0.3), (2.0, 0.0)])
def test_gradient_matches_the_hand_derived_one(temperature, alpha):
    """d/ds [alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(s, y)]
    = w * (alpha T (p_s^T - p_t^T) + (1 - alpha) (p_s - onehot(y))), p^T = softmax(logits / T)."""
    s, t = _logits(2), _logits(3)
    targets = jax.random.randint(jax.random.key(0), s.shape[:-1], 0, s.shape[-1])
    weights = jnp.asarray(np.random.default_rng(4).integers(0, 2, s.shape[:-1]).astype(np.float32))

    def objective(student):
        total, _, _ = distillation_loss_sums(student, t, targets, weights, temperature=temperature, alpha=alpha)
        return total

    got = np.asarray(jax.grad(objective)(s))
    sn, tn = np.asarray(s, np.float64), np.asarray(t, np.float64)
    onehot = np.eye(s.shape[-1])[np.asarray(targets)]
    soft = temperature * (_softmax(sn / temperature) - _softmax(tn / temperature))
    hard = _softmax(sn) - onehot
    want = np.asarray(weights)[..., None] * (alpha * soft + (1 - alpha) * hard)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # The teacher is a target: no gradient flows into it.
    teacher_grad = jax.grad(
        lambda tt: distillation_loss_sums(s, tt, targets, weights, temperature=temperature, alpha=alpha)[0]
    )(t)
    assert not np.any(np.asarray(teacher_grad))


def test_sums_count_and_masking():
    s, t = _logits(5), _logits(6)
    targets = jnp.zeros(s.shape[:-1], jnp.int32)
    weights = jnp.ones(s.shape[:-1]).at[0].set(0.0)  # the first row is padding
    total, count, sums = distillation_loss_sums(s, t, targets, weights, temperature=2.0, alpha=0.25)
    assert float(count) == 5
    np.testing.assert_allclose(float(sums["kl"]), float(soft_kl(s[1], t[1], 2.0).sum()), rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.25 * 4.0 * float(sums["kl"]) + 0.75 * float(sums["nll"]), rtol=1e-5)
    # Changing the masked row changes nothing.
    s2 = s.at[0].set(100.0)
    assert float(distillation_loss_sums(s2, t, targets, weights, temperature=2.0, alpha=0.25)[0]) == float(total)


def test_bad_settings_name_the_field():
    s = _logits(0)
    y, w = jnp.zeros(s.shape[:-1], jnp.int32), jnp.ones(s.shape[:-1])
    with pytest.raises(ValueError, match="distill.temperature"):
        distillation_loss_sums(s, s, y, w, temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="distill.alpha"):
        distillation_loss_sums(s, s, y, w, temperature=1.0, alpha=1.5)
