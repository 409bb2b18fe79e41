"""The in-batch contrastive loss against a per-row loop written from its definition."""

import jax
import numpy as np
import pytest

from research.embeddings.contrastive import in_batch_contrastive_loss


def reference(q, p, valid, t, symmetric):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    total, count, correct = 0.0, 0, 0
    for a, b in [(q, p), (p, q)][: 2 if symmetric else 1]:
        for i in np.flatnonzero(valid):
            s = np.array([a[i] @ b[j] / t for j in np.flatnonzero(valid)])
            col = list(np.flatnonzero(valid)).index(i)
            total += -(s[col] - np.log(np.exp(s - s.max()).sum()) - s.max())
            correct += int(np.argmax(s) == col)
            count += 1
    return total, count, correct


@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_the_definition_with_padding(symmetric):
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    p[:3] += 2 * q[:3]  # some positives clearly closest
    valid = np.array([1, 1, 1, 1, 0, 1], bool)
    total, count, metrics = jax.jit(in_batch_contrastive_loss, static_argnames=("temperature", "symmetric"))(
        q, p, valid, temperature=0.1, symmetric=symmetric
    )
    ref_total, ref_count, ref_correct = reference(q, p, valid, 0.1, symmetric)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    assert float(count) == ref_count and float(metrics["accuracy"]) == ref_correct


def test_bad_shapes_and_temperature():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="both be"):
        in_batch_contrastive_loss(x, x[:3])
    with pytest.raises(ValueError, match="temperature"):
        in_batch_contrastive_loss(x, x, temperature=0.0)
