"""ROUGE on pairs computed by hand (research.apps.rouge)."""

import numpy as np
import pytest

from research.apps.rouge import rouge, rouge_prefers_first


def test_rouge_on_known_pairs():
    # prediction "the cat sat" vs reference "the cat sat on the mat": unigrams 3 matched of 3 and 6,
    # bigrams 2 of 2 and 5, LCS 3.
    got = rouge(["the cat sat", "a dog"], ["the cat sat on the mat", "the cat sat on the mat"])
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    np.testing.assert_allclose([got["rouge1"][0], got["rouge2"][0], got["rougeL"][0]],
                               [f(1, 3 / 6), f(1, 2 / 5), f(1, 3 / 6)])  # fmt: skip
    assert got["rouge1"][1] == got["rougeL"][1] == 0.0
    assert rouge(["Same, words!"], ["same words"])["rouge2"][0] == 1.0  # case and punctuation aside


def test_rouge_preference_and_bad_input():
    p = rouge_prefers_first(["the cat sat"] * 3, ["the cat sat", "dog", "x"], ["the dog", "the cat", "y"])
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="one each"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="kind='bleu'"):
        rouge_prefers_first(["a"], ["a"], ["b"], kind="bleu")
