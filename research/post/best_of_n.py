"""Best-of-N (rejection sampling): sample N, keep the one a scorer likes best.

At inference: `best_of_n(...)` samples N responses per prompt with the sampler,
scores them (a reward model, or any reward function, verifiers included) and
keeps each prompt's best (the first of equal scores).

For measuring the method without sampling N afresh for every N, a pool of M
samples per prompt stands for the policy pi (its empirical distribution):
drawing N i.i.d. responses and keeping the best-scored one has the closed form

    P(best has score level l) = F(l)^N - F(l-)^N      (F: the pool's score CDF)

with ties at one level broken uniformly. From it:
  expected_value(scores, values, n)   E[value of the pick], e.g. the gold reward
                                      of the response a learned RM picks
  measured_kl(scores, n)              KL(pi_BoN || pi) = sum_l P_BoN(l) log(P_BoN(l) / P_pi(l))
  analytic_kl(n)                      log N - (N - 1) / N, its value when scores never tie
                                      (the usual quote; an upper bound, Beirami et al. 2024)
Ties (e.g. an exact-match verifier's 0/1, or short texts with equal gold
reward) make the measured KL smaller than the analytic one. The pool should be
much larger than N for the estimates to stand for pi itself.
"""

from __future__ import annotations

import math

import numpy as np

from research.decode import sample


def analytic_kl(n: int) -> float:
    if n < 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _levels(scores: np.ndarray):
    """Distinct score levels of a pool, ascending: (level of each item, count per level, CDF at each level)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError(f"a best-of-N pool needs a non-empty 1-D array of finite scores, got shape {scores.shape}")
    levels, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts) / scores.size
    return inverse, counts, cdf


def bon_level_probabilities(scores, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(P_BoN per level, P_pi per level) of one pool's ascending score levels."""
    if n < 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    _, counts, cdf = _levels(scores)
    below = np.concatenate([[0.0], cdf[:-1]])
    return cdf**n - below**n, counts / counts.sum()


def measured_kl(scores, n: int) -> float:
    """KL(best-of-n || pi) of one pool (see the module docstring)."""
    p_bon, p_pi = bon_level_probabilities(scores, n)
    keep = p_bon > 0
    return float(np.sum(p_bon[keep] * np.log(p_bon[keep] / p_pi[keep])))


def expected_value(scores, values, n: int) -> float:
    """E[values of the best-scored of n i.i.d. draws from the pool], ties broken uniformly."""
    inverse, counts, _ = _levels(scores)
    values = np.asarray(values, np.float64)
    if values.shape != inverse.shape:
        raise ValueError(f"values {values.shape} and scores {inverse.shape} of a pool must match")
    level_means = np.bincount(inverse, weights=values) / counts
    p_bon, _ = bon_level_probabilities(scores, n)
    return float(np.dot(p_bon, level_means))


def pick(scores) -> np.ndarray:
    """[prompts, n] scores -> [prompts] index of each prompt's best (the first of equal scores)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"best-of-N scores must be [prompts, n >= 1], got {scores.shape}")
    return np.argmax(scores, axis=1)


def best_of_n(model, params, prompts, config, scorer, rng=None, *, mesh=None):
    """Samples config.num_samples (= N) responses per prompt and keeps each prompt's best.

    scorer(samples) -> [rows] scores (host numpy), e.g. a research.post.rewards.RewardModel's
    `score`, or a function of the decoded texts. Returns (samples, scores [prompts, N], best [prompts]:
    the row index into `samples` of each prompt's pick).
    """
    samples = sample(model, params, prompts, config, rng, mesh=mesh)
    scores = np.asarray(scorer(samples), np.float64).reshape(len(prompts), config.num_samples)
    best = pick(scores) + np.arange(len(prompts)) * config.num_samples
    return samples, scores, best
