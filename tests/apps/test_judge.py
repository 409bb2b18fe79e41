"""Judges (research.apps.judge): verdict probabilities against a forward pass, biases and mitigations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.apps.judge import (
    Judge,
    agreement,
    choice_ids,
    first_position_win_rate,
    length_penalized,
    next_token_logprobs,
    position_consistency,
    swap_average,
)
from research.models import DecoderLM, ModelConfig, init_params
from research.tokenizers import ByteTokenizer


def test_swap_averaging_removes_a_pure_position_preference_exactly():
    always_first = np.ones(7)  # "A" whatever is shown: p(first) = 1 in both orders
    np.testing.assert_array_equal(swap_average(always_first, always_first), 0.5)
    leaning = np.full(7, 0.8)  # any constant preference for a position
    np.testing.assert_array_equal(swap_average(leaning, leaning), 0.5)
    assert first_position_win_rate(always_first, always_first) == 1.0
    assert position_consistency(always_first, always_first) == 0.0  # the winner flips with the order


def test_a_real_preference_survives_swapping():
    p_ab, p_ba = np.array([0.9, 0.6, 0.3]), np.array([0.2, 0.7, 0.6])  # pair 1: A wins in both orders
    np.testing.assert_allclose(swap_average(p_ab, p_ba), [0.85, 0.45, 0.35])
    assert position_consistency(p_ab, p_ba) == pytest.approx(2 / 3)  # pairs 0 and 2 agree across orders
    assert first_position_win_rate(p_ab, p_ba) == pytest.approx(4 / 6)
    assert agreement(swap_average(p_ab, p_ba), [True, False, False]) == 1.0


def test_the_length_penalty_on_equal_content():
    # A verbose judge prefers the padded copy (first) of the same answer; the penalty undoes it.
    p = np.array([0.7, 0.7])
    out = length_penalized(p, len_first=[30, 10], len_second=[10, 10], per_token=0.1)
    assert out[0] < 0.5 and out[1] == pytest.approx(0.7)
    np.testing.assert_allclose(length_penalized(p, [10, 30], [30, 10], per_token=0.0), p)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = ByteTokenizer()
    model = DecoderLM(ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, d_model=32, num_heads=2,
                                  num_kv_heads=2, mlp_dim=64, max_len=256))  # fmt: skip
    return model, nn.unbox(init_params(model, jax.random.key(0))), tokenizer


def test_next_token_logprobs_equal_one_unpadded_forward_per_prompt(tiny):
    model, params, _ = tiny
    prompts = [[5, 9, 11], list(range(3, 40)), [7]]
    got = next_token_logprobs(model, params, prompts)
    forward = jax.jit(lambda t: model.apply({"params": params}, t))
    for row, p in zip(got, prompts, strict=True):
        logits = forward(jnp.asarray([p]))[0, -1]
        np.testing.assert_allclose(row, jax.nn.log_softmax(logits), atol=2e-5)


def test_the_verdict_is_the_renormalised_choice_probability(tiny):
    model, params, tokenizer = tiny
    judge = Judge(model, params, tokenizer, batch_size=2)
    questions, a, b = ["2+2?", "capital of France?", "x"], ["4", "Paris", "y"], ["5", "Lyon", "zz"]
    p = judge.pairwise(questions, a, b)
    prompts = judge.pairwise_prompts(questions, a, b)
    logp = next_token_logprobs(model, params, [list(tokenizer.encode(t)) for t in prompts])
    ids = choice_ids(tokenizer, ("A", "B"))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(logp[:, ids[1]] - logp[:, ids[0]])), rtol=1e-5)
    scores = judge.pointwise(questions, a, scale=5)
    assert scores.shape == (3,) and ((scores >= 1) & (scores <= 5)).all()
    reasons = judge.justify(prompts[:2], ["A", "B"], max_new_tokens=4)
    assert len(reasons) == 2 and all(isinstance(r, str) for r in reasons)


def test_bad_judge_inputs_name_the_field(tiny):
    model, params, tokenizer = tiny
    with pytest.raises(ValueError, match="choices: 'AB' is 2 tokens"):
        choice_ids(tokenizer, ("AB", "C"))
    judge = Judge(model, params, tokenizer)
    with pytest.raises(ValueError, match="one entry per pair"):
        judge.pairwise(["q"], ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="scale=12"):
        judge.pointwise(["q"], ["a"], scale=12)
    with pytest.raises(ValueError, match="max_len is 256"):
        next_token_logprobs(model, params, [[1] * 300])
