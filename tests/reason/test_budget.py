"""Budget forcing inside the jitted sampler, against hand-checked structure and a host step-by-step reference."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decode import ForbidTokens, SamplingConfig, TokenProcessor, sample
from research.decode.processors import forbid
from research.models import DecoderLM, ModelConfig, init_params
from research.reason.budget import BudgetForcing, ForcePrefix, check_budget, count_waits, thinking_lengths

VOCAB = 61
OPEN, CLOSE, ANSWER = 55, 56, 57  # <think>, </think>, <answer>: one id each
WAIT = (58, 59, 60)  # " Wait ": a few ordinary ids
PROMPTS = [[3, 4, 5], [9, 8], [10, 11, 12, 13]]
REF_PROMPTS = [[3, 4, 5], [9, 8], [10, 11, 12, 13], [20, 21], [30, 2, 31]]


@pytest.fixture(scope="module")
def tiny():
    model = DecoderLM(
        ModelConfig(
            vocab_size=VOCAB,
            num_layers=1,
            d_model=32,
            num_heads=4,
            num_kv_heads=2,
            mlp_dim=64,
            max_len=48,
            tie_embeddings=False,
        )
    )
    params = nn.unbox(jax.jit(lambda key: init_params(model, key))(jax.random.key(0)))  # jitted: no eager op compiles
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    return model, params, forward


@dataclasses.dataclass(frozen=True)
class CloseBonus(TokenProcessor):
    """Test-only: makes the model want to close its thinking. Before step `after`, think_close and `hold`
    are forbidden; from it on think_close's logit gets bonus * (step - after + 1)."""

    think_close: int
    after: int
    bonus: float
    hold: tuple[int, ...] = ()

    def __call__(self, logits, ctx, state):
        early = jnp.full((logits.shape[0],), ctx.step < self.after)
        logits = forbid(logits, (self.think_close, *self.hold), where=early)
        extra = jnp.where(early, 0.0, self.bonus * (ctx.step - self.after + 1))
        return logits.at[:, self.think_close].add(extra), jnp.zeros(logits.shape[0], bool), state


def run(tiny, processors, max_new_tokens, *, temperature=1.0, num_samples=4, prompts=PROMPTS, seed=0):
    model, params, _ = tiny
    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, num_samples=num_samples, processors=processors
    )
    out = sample(model, params, prompts, config, jax.random.key(seed))
    p = out.prompt_len
    return out.responses(), np.asarray(out.forced_mask)[:, p:], np.asarray(out.logprobs)[:, p:]


@pytest.mark.parametrize("budget", [1, 7])  # and 6, 9 with Waits below; each budget is a compile
def test_cap_gives_exactly_the_budget_then_forced_close_and_answer(tiny, budget):
    """A model that can never close by itself thinks exactly B tokens; </think> <answer> follow, forced."""
    processors = (
        ForcePrefix((OPEN,)),
        ForbidTokens((CLOSE,)),  # before BudgetForcing: the model cannot close, the forced close still can
        BudgetForcing(OPEN, CLOSE, answer_open=(ANSWER,), max_thinking=budget),
    )
    responses, forced, logprobs = run(tiny, processors, budget + 5)
    assert len(responses) == 12 and len({tuple(r) for r in responses}) > 1  # temperature 1: samples differ
    np.testing.assert_array_equal(thinking_lengths(responses, OPEN, CLOSE), budget)
    for row, fm, lp in zip(responses, forced, logprobs, strict=True):
        assert len(row) == budget + 5 and row[0] == OPEN
        assert row[budget + 1 : budget + 3] == [CLOSE, ANSWER] and CLOSE not in row[: budget + 1]
        assert np.flatnonzero(fm).tolist() == [0, budget + 1, budget + 2]
        np.testing.assert_array_equal(lp[[0, budget + 1, budget + 2]], 0.0)
        assert (lp[1 : budget + 1] < 0).all()  # thinking tokens are the model's draws


@pytest.mark.parametrize("waits", [0, 1, 3])
def test_waits_are_appended_before_the_model_may_close(tiny, waits):
    """The model wants to close after 2 thinking tokens; it gets exactly m Waits first, then closes itself."""
    processors = (
        ForcePrefix((OPEN,)),
        CloseBonus(CLOSE, after=3, bonus=50.0, hold=(WAIT[0],)),  # steps 1, 2: free thinking; then close
        BudgetForcing(OPEN, CLOSE, answer_open=(ANSWER,), num_waits=waits, wait=WAIT if waits else ()),
    )
    responses, forced, _ = run(tiny, processors, 16)
    think = 2 + len(WAIT) * waits
    np.testing.assert_array_equal(thinking_lengths(responses, OPEN, CLOSE), think)
    for row, fm in zip(responses, forced, strict=True):
        assert count_waits(row, WAIT, OPEN, CLOSE) == waits
        assert row[3 : 3 + len(WAIT) * waits] == list(WAIT) * waits
        assert row[think + 1 : think + 3] == [CLOSE, ANSWER]
        tails = [3 + len(WAIT) * k + j for k in range(waits) for j in range(1, len(WAIT))]
        # wait[0] and the close are the model's; wait[1:] and the answer tag are forced.
        assert np.flatnonzero(fm).tolist() == [0, *tails, think + 2]


def test_cap_wins_over_owed_waits(tiny):
    """m=3 Waits would make 11 thinking tokens; B=6 closes in the middle of the second Wait."""
    processors = (
        ForcePrefix((OPEN,)),
        CloseBonus(CLOSE, after=3, bonus=50.0, hold=(WAIT[0],)),
        BudgetForcing(OPEN, CLOSE, answer_open=(ANSWER,), max_thinking=6, num_waits=3, wait=WAIT),
    )
    responses, forced, _ = run(tiny, processors, 12)
    np.testing.assert_array_equal(thinking_lengths(responses, OPEN, CLOSE), 6)
    for row, fm in zip(responses, forced, strict=True):
        assert row[3:9] == [*WAIT, WAIT[0], CLOSE, ANSWER]
        assert np.flatnonzero(fm).tolist() == [0, 4, 5, 7, 8]  # the cut-short Wait's tail is dropped


# --- The host reference: the same rules, written as a queue of pending forced tokens, on full forward passes --


class RefBudget:
    """One row's BudgetForcing, step by step in plain Python."""

    def __init__(self, bf: BudgetForcing):
        self.bf, self.phase, self.count, self.waits, self.queue = bf, "before", 0, 0, []

    def process(self, logits):
        bf = self.bf
        if self.phase == "thinking" and bf.max_thinking and self.count >= bf.max_thinking:
            self.queue = [bf.think_close, *bf.answer_open]
        if self.queue:
            out = np.full_like(logits, -np.inf)
            out[self.queue[0]] = 0.0
            return out, True
        if self.phase == "thinking" and self.waits < bf.num_waits:
            logits = logits.copy()
            logits[bf.wait[0]] = np.logaddexp(logits[bf.wait[0]], logits[bf.think_close])
            logits[bf.think_close] = -np.inf
        return logits, False

    def observe(self, token):
        bf, was_forced = self.bf, bool(self.queue)
        self.queue = self.queue[1:]
        if self.phase == "before" and token == bf.think_open:
            self.phase = "thinking"
        elif self.phase == "thinking" and token == bf.think_close:
            self.phase = "after"
            if not was_forced:
                self.queue = list(bf.answer_open)
        elif self.phase == "thinking":
            self.count += 1
            if not was_forced and self.waits < bf.num_waits and token == bf.wait[0]:
                self.waits += 1
                self.queue = list(bf.wait[1:])


def reference_greedy(forward, params, prompt, prefix, bonus: CloseBonus, bf, steps):
    """(tokens, forced, log-probs) of greedy decoding with ForcePrefix(prefix), `bonus`, `bf` on cache-free passes."""
    ref, seq, tokens, forced, logprobs = RefBudget(bf), list(prompt), [], [], []
    for step in range(steps):
        row = jnp.asarray([seq + [0] * (40 - len(seq))])  # one length: one compile; causal, padding unseen
        logits = np.asarray(forward(params, row))[0, len(seq) - 1].astype(np.float64)
        if step < len(prefix):
            logits, was_forced = np.where(np.arange(VOCAB) == prefix[step], 0.0, -np.inf), True
        else:
            was_forced = False
            if step < bonus.after:
                logits[[bonus.think_close, *bonus.hold]] = -np.inf
            else:
                logits[bonus.think_close] += bonus.bonus * (step - bonus.after + 1)
        logits, by_budget = ref.process(logits)
        token = int(np.argmax(logits))
        ref.observe(token)
        finite = logits[np.isfinite(logits)]
        logprobs.append(logits[token] - (finite.max() + np.log(np.exp(finite - finite.max()).sum())))
        tokens.append(token)
        forced.append(was_forced or by_budget)
        seq.append(token)
    return tokens, forced, np.asarray(logprobs)


def test_jitted_sampler_equals_a_host_reference(tiny):
    """Fast path vs slow reference: greedy, token for token, with the forced marks and log-probs.

    A two-token prefix (<think> and a forced thinking token), a soft push to close (each prompt wants to
    close at its own step), two-token Waits and a cap that cuts some rows and not others."""
    _, params, forward = tiny
    prefix, wait, steps = (OPEN, 7), WAIT[:2], 16
    bonus = CloseBonus(CLOSE, after=3, bonus=0.5)
    bf = BudgetForcing(OPEN, CLOSE, answer_open=(ANSWER,), max_thinking=9, num_waits=2, wait=wait)
    responses, forced, logprobs = run(
        tiny, (ForcePrefix(prefix), bonus, bf), steps, temperature=0.0, num_samples=1, prompts=REF_PROMPTS
    )
    for prompt, row, fm, lp in zip(REF_PROMPTS, responses, forced, logprobs, strict=True):
        want, want_forced, want_lp = reference_greedy(forward, params, prompt, prefix, bonus, bf, steps)
        assert row == want and fm.tolist() == want_forced
        np.testing.assert_allclose(lp, want_lp, atol=1e-4)
    # Not vacuous: the cap cuts some rows (here in the middle of a Wait), the others get both Waits and close.
    lengths = thinking_lengths(responses, OPEN, CLOSE)
    capped = lengths == bf.max_thinking
    assert capped.any() and (lengths[~capped] < bf.max_thinking).all() and (~capped).sum() >= 2
    assert all(count_waits(r, wait, OPEN, CLOSE) == 2 for r, c in zip(responses, capped, strict=True) if not c)
    assert all(CLOSE in r and r[r.index(CLOSE) + 1] == ANSWER for r in responses)


def test_thinking_lengths_and_count_waits_on_hand_written_responses():
    W = list(WAIT)
    closed = [OPEN, 1, *W, 2, *W, *W, CLOSE, ANSWER, *W, 3]
    never_closed = [OPEN, 1, 2, *W[:2], *W]
    no_think = [ANSWER, *W, 4]
    late_open = [5, 6, OPEN, CLOSE, OPEN, 7, CLOSE]  # the first span only; an empty one
    responses = [closed, never_closed, no_think, late_open, []]
    np.testing.assert_array_equal(thinking_lengths(responses, OPEN, CLOSE), [11, 7, 0, 0, 0])
    assert [count_waits(r, W, OPEN, CLOSE) for r in responses] == [3, 1, 0, 0, 0]
    assert count_waits(closed, W) == 4  # the whole response
    assert count_waits([1, 1, 1, 1, 1], [1, 1]) == 2  # non-overlapping
    with pytest.raises(ValueError, match="both"):
        count_waits(closed, W, OPEN)


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("max_thinking", dict(max_thinking=-1)),
        ("num_waits", dict(num_waits=-2, wait=WAIT)),
        ("wait", dict(num_waits=1)),
        ("wait", dict(num_waits=1, wait=(58, CLOSE))),
        ("think_open", dict(think_open=-1)),
        ("think_close", dict(think_close=-3)),
        ("think_close", dict(think_close=OPEN)),
        ("answer_open", dict(answer_open=(ANSWER, -1))),
        ("wait", dict(wait=(-5,))),
    ],
)
def test_bad_budget_forcing_arguments(field, kwargs):
    args = dict(think_open=OPEN, think_close=CLOSE) | kwargs
    with pytest.raises(ValueError, match=rf"BudgetForcing\.{field}="):
        BudgetForcing(**args)


def test_bad_prefix_and_budgets():
    with pytest.raises(ValueError, match="ForcePrefix.sequence"):
        ForcePrefix(())
    with pytest.raises(ValueError, match="ForcePrefix.sequence"):
        ForcePrefix((OPEN, -1))
    check_budget(31, 32)
    for budget in (0, -4):
        with pytest.raises(ValueError, match=rf"reason\.budget={budget} must be > 0"):
            check_budget(budget, 32, field="reason.budget")
    for budget in (32, 40):
        with pytest.raises(ValueError, match=rf"max_thinking={budget} leaves no room.*max_new_tokens=32"):
            check_budget(budget, 32)
