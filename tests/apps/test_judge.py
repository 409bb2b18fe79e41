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
    failure_rate,
    first_position_win_rate,
    length_penalized,
    next_token_logprobs,
    parse_verdict,
    position_consistency,
    renormalised,
    swap_average,
    text_preference,
    win_rate,
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


class _AlwaysA:
    """A 'model' whose next token is "A" after any prompt: a pure position preference."""

    def __init__(self, vocab_size: int, a_id: int):
        self.config = ModelConfig(vocab_size=vocab_size, num_layers=1, d_model=8, num_heads=1, max_len=256)
        self.a_id = a_id

    def apply(self, variables, tokens, positions=None, segment_ids=None):
        return jnp.zeros((*tokens.shape, self.config.vocab_size)).at[..., self.a_id].set(9.0)


def test_a_judge_that_always_says_a_scores_one_half_after_swap_averaging():
    tokenizer = ByteTokenizer()
    model = _AlwaysA(tokenizer.vocab_size, choice_ids(tokenizer, ("A",))[0])
    judge = Judge(model, {}, tokenizer)
    questions, good, bad = ["1+1?", "2+2?", "3+3?"], ["2", "4", "6"], ["3", "5", "7"]
    p_ab, p_ba = judge.pairwise(questions, good, bad), judge.pairwise(questions, bad, good)
    assert (p_ab > 0.99).all() and (p_ba > 0.99).all()
    assert agreement(p_ab, [True] * 3) == 1.0 and agreement(p_ba, [False] * 3) == 0.0  # right only when first
    np.testing.assert_allclose(swap_average(p_ab, p_ba), 0.5, atol=1e-6)
    assert position_consistency(p_ab, p_ba) == 0.0 and first_position_win_rate(p_ab, p_ba) == 1.0


def test_unparseable_verdicts_are_failures_never_errors():
    assert [parse_verdict(t) for t in ("A", " B.", "A\nBecause 2 + 2 = 4.", "Answer B", "", "C", "Both", "AB")] == [
        "A", "B", "A", "B", None, None, None, None]  # fmt: skip
    p = text_preference(["A", None, "B", "A"])
    np.testing.assert_array_equal(np.isnan(p), [False, True, False, False])
    assert failure_rate(p) == 0.25
    assert agreement(p, [True, True, False, False]) == 0.5  # the missing verdict counts as wrong
    assert agreement([0.5, 0.9], [True, True]) == 0.75  # an exact tie is half right
    assert position_consistency([np.nan, 0.9], [0.1, 0.1]) == 0.5 and win_rate([np.nan, 0.5, 0.7]) == 0.5
    np.testing.assert_array_equal(np.isnan(swap_average([np.nan, 0.8], [0.2, 0.2])), [True, False])
    with pytest.raises(ValueError, match="one gold preference per pair"):
        agreement([0.7, 0.2], [True])


def test_chat_mode_reads_the_first_response_token(tiny):
    # An instruction-tuned run answers after [BOS] prompt [SEP]; the verdict is the response's first token.
    from research.data.instructions import prompt_tokens

    model, params, tokenizer = tiny
    judge = Judge(model, params, tokenizer, chat=True, template="Q: {question}\nA: {first}\nB: {second}\n{criteria}")
    prompts = judge.pairwise_prompts(["x?"], ["a"], ["b"])
    assert prompts == ["Q: x?\nA: a\nB: b\ncorrect and concise"]
    logp = next_token_logprobs(model, params, [list(prompt_tokens(tokenizer, prompts[0]))])
    ids = choice_ids(tokenizer, ("A", "B"), space=False)
    np.testing.assert_allclose(judge.pairwise(["x?"], ["a"], ["b"]), renormalised(logp, ids)[:, 0], rtol=1e-5)
    assert all(v in ("A", "B", None) for v in judge.generated_verdicts(prompts, max_new_tokens=2))
    assert len(judge.justify(prompts, ["A"], max_new_tokens=3)) == 1


def test_a_hugging_face_checkpoint_folder_judges_like_the_model_it_holds(tmp_path):
    from research.models import hf

    tokenizer = ByteTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, d_model=32, num_heads=2, num_kv_heads=2,
                         mlp_dim=64, max_len=128, ffn="gelu", norm="layernorm", position="learned",
                         tie_embeddings=True, scale_tied_logits=False, use_bias=True)  # fmt: skip
    ours = DecoderLM(config)
    params = init_params(ours, jax.random.key(3))
    hf.save_pretrained(str(tmp_path), ours, params, "gpt2")
    loaded, loaded_params = hf.load_pretrained(str(tmp_path))
    args = (["2+2?", "3+1?"], ["4", "5"], ["5", "4"])
    want = Judge(ours, nn.unbox(params), tokenizer).pairwise(*args)
    np.testing.assert_allclose(Judge(loaded, nn.unbox(loaded_params), tokenizer).pairwise(*args), want, atol=1e-5)
