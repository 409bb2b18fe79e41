"""A trained run answering reasoning prompts: CoT or direct, budgets, Waits, many samples — on the sampler.

    reasoner = Reasoner(load_run("workdirs/rl_steps/sft"))
    out = reasoner.answer(prompts, mode="think", max_thinking=16, num_samples=8, temperature=1.0, seed=0)
    out.texts[p][s]            the response (tags included) of sample s of prompt p
    out.thinking[p][s]         its thinking tokens (between <think> and </think>)
    reasoner.correct(examples, out)   [prompts, samples] bool, by the examples' verifier

Modes: "free" lets the model choose whether to think; "think" forces `<think>` as the
first token (chain-of-thought prompting), "direct" forces `<answer>` (no trace).
Budget forcing (research/reason/budget.py) caps thinking at `max_thinking` tokens
then forces `</think><answer>`, or turns the first `num_waits` attempts to close
the trace into WAIT. Every forced token is marked in the samples, so nothing
forced is counted as the model's choice.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from research.data import instructions, reasoning
from research.decode import SamplingConfig, sample
from research.reason.budget import BudgetForcing, ForcePrefix, check_budget, thinking_lengths

MODES = ("free", "think", "direct")


@dataclasses.dataclass
class Answers:
    texts: list[list[str]]  # [prompts][samples] decoded responses, tags kept, [EOS] dropped
    thinking: np.ndarray  # [prompts, samples] thinking tokens
    lengths: np.ndarray  # [prompts, samples] response tokens (forced ones included)
    samples: object  # the research.decode.Samples, rows prompt-major


class Reasoner:
    """A LoadedRun (research.train.runs) whose tokenizer has the reasoning tags as added tokens."""

    def __init__(self, run, mesh=None):
        self.run, self.mesh, self.tok = run, mesh, run.tokenizer
        if not set(reasoning.TAGS) <= set(getattr(self.tok, "added", ())):  # added tokens: one id each, always
            raise ValueError(
                f"{run.workdir}: its tokenizer lacks the reasoning tags as added tokens; "
                f"train it with data.added_tokens={reasoning.ADDED_TOKENS!r}"
            )
        self.think_open, self.think_close, self.answer_open, self.answer_close = (
            self.tok.token_to_id(t) for t in reasoning.TAGS
        )
        self.wait = tuple(int(t) for t in self.tok.encode(reasoning.WAIT))
        self.model, self.params = run.for_decoding()

    def prompt_tokens(self, prompts: list[str]) -> list[list[int]]:
        return [instructions.prompt_tokens(self.tok, p).tolist() for p in prompts]

    def config(self, *, mode="free", max_new_tokens, max_thinking=0, num_waits=0, num_samples=1, temperature=0.0,
               stop_sequences=()) -> SamplingConfig:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; choose one of {list(MODES)}")
        if max_thinking:
            check_budget(max_thinking, max_new_tokens, field="max_thinking")
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        processors = []
        if mode != "free":
            processors.append(ForcePrefix((self.think_open if mode == "think" else self.answer_open,)))
        if mode != "direct":
            processors.append(
                BudgetForcing(
                    self.think_open,
                    self.think_close,
                    answer_open=(self.answer_open,),
                    max_thinking=max_thinking,
                    num_waits=num_waits,
                    wait=self.wait,
                )  # fmt: skip
            )
        return SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, num_samples=num_samples,
            stop_tokens=(self.tok.eos_id,), stop_sequences=tuple(stop_sequences), processors=tuple(processors),
            pad_id=self.tok.pad_id,
        )  # fmt: skip

    def answer(self, prompts: list[str], *, seed: int = 0, **kwargs) -> Answers:
        config = self.config(**kwargs)
        samples = sample(self.model, self.params, self.prompt_tokens(prompts), config, jax.random.key(seed),
                         mesh=self.mesh)  # fmt: skip
        responses = samples.responses()
        n = config.num_samples
        texts = [self.tok.decode([t for t in r if t != self.tok.eos_id]) for r in responses]
        thinking = thinking_lengths(responses, self.think_open, self.think_close)
        shape = (len(prompts), n)
        return Answers(
            texts=[texts[i * n : (i + 1) * n] for i in range(len(prompts))],
            thinking=np.asarray(thinking).reshape(shape),
            lengths=np.asarray(samples.lengths).reshape(shape),
            samples=samples,
        )

    @staticmethod
    def correct(examples, answers: Answers) -> np.ndarray:
        """[prompts, samples] bool: the verifier of each example on each of its samples."""
        return np.array(
            [[instructions.exact_match(e, t) for t in row] for e, row in zip(examples, answers.texts, strict=True)]
        )
