"""Best-of-N against simulation and its closed forms."""

import math

import numpy as np
import pytest

from research.post import best_of_n as bon


def test_analytic_kl_values():
    assert bon.analytic_kl(1) == 0.0
    assert bon.analytic_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon.analytic_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    with pytest.raises(ValueError, match="n >= 1"):
        bon.analytic_kl(0)


@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_measured_kl_equals_the_analytic_one_when_scores_never_tie(n):
    """A large pool of distinct scores: the plug-in KL converges to log N - (N - 1) / N."""
    scores = np.random.default_rng(n).normal(size=200_000)
    assert bon.measured_kl(scores, n) == pytest.approx(bon.analytic_kl(n), abs=2e-3 + 1e-2 * bon.analytic_kl(n))


def test_ties_make_the_kl_smaller():
    scores = np.random.default_rng(0).integers(0, 2, size=10_000).astype(float)  # a 0/1 verifier
    for n in (2, 8, 64):
        assert bon.measured_kl(scores, n) < bon.analytic_kl(n)
    # Exactly: with P(1) = q, best-of-n returns 1 with prob 1 - (1-q)^n.
    q = scores.mean()
    p1 = 1 - (1 - q) ** 8
    want = p1 * math.log(p1 / q) + (1 - p1) * math.log((1 - p1) / (1 - q))
    assert bon.measured_kl(scores, 8) == pytest.approx(want, rel=1e-9)


def test_expected_value_matches_simulated_best_of_n():
    """E[gold of the pick] from the closed form == a Monte Carlo of drawing n with replacement and keeping
    the best score, ties broken uniformly (scores on a coarse grid, so ties happen)."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=40), 1)
    gold = scores + rng.normal(size=40)
    for n in (1, 4, 16):
        draws = rng.integers(0, 40, size=(100_000, n))
        s = scores[draws] + rng.random(draws.shape) * 1e-9  # uniform tie-break among equal scores
        picked = gold[draws[np.arange(len(draws)), np.argmax(s, axis=1)]]
        assert bon.expected_value(scores, gold, n) == pytest.approx(picked.mean(), abs=0.02)
    assert bon.expected_value(scores, gold, 1) == pytest.approx(gold.mean())


def test_pick_takes_the_first_of_equal_scores_and_refuses_bad_shapes():
    np.testing.assert_array_equal(bon.pick([[1.0, 3.0, 3.0], [0.0, -1.0, 0.0]]), [1, 0])
    with pytest.raises(ValueError, match="prompts, n"):
        bon.pick([1.0, 2.0])
    with pytest.raises(ValueError, match="finite scores"):
        bon.measured_kl([1.0, float("nan")], 2)
