"""Reward functions: a registry of scores for sampled responses, and their weighted sum.

`policy.rewards = "gold:1,format:0.1"` names registered functions with weights. Each
is called once per rollout with every row's prompt, decoded response and sample
arrays (host numpy) and returns one float per row:

  gold            the prompt set's gold reward (research/post/prompts.py): the toy
                  language's sentiment, or 1 for an instruction's exact answer
  exact_match     1 for the exact answer (instruction prompts only; the verifier of
                  research.data.instructions)
  format          1 for a well-formed response: chat responses that end with [EOS]
                  and whose answer has the kind's shape (a number, letters, digits; for
                  reasoning kinds the `<think>` format), plain ones that are non-empty
  tinyzero        reasoning prompts: 1 correct, 0.1 well-formed but wrong, 0 malformed
  length_penalty  -(response tokens / max_new_tokens)
  reward_model    a learned reward model's score (a `reward` run, policy.reward_workdir)

A reward that returns NaN, infinities or the wrong shape is an error naming it.
Registering another is one class: `@register_reward("name")`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from research.data import reasoning

_REWARDS: dict[str, type] = {}

# research.data.instructions kinds -> the shape of a well-formed answer.
ANSWER_SHAPES = {
    "arithmetic": r"-?\d+",
    "reverse": r"[a-z]+",
    "uppercase": r"[A-Z]+",
    "sort": r"\d( \d)*",
    "code": r"\S.*",
}


@dataclasses.dataclass
class RewardInputs:
    prompts: list  # research.post.prompts.Prompt per row
    texts: list[str]  # decoded responses
    lengths: np.ndarray  # [n] response tokens
    stopped: np.ndarray  # [n] ended by a stop token
    max_new_tokens: int
    samples: object = None  # the research.decode.Samples (device arrays), for model-based rewards


def register_reward(name: str):
    def wrap(cls):
        _REWARDS[name] = cls
        cls.name = name
        return cls

    return wrap


def parse_rewards(spec: str, field: str = "policy.rewards") -> list[tuple[str, float]]:
    """'gold:1,format:0.1' -> [("gold", 1.0), ("format", 0.1)]; a bare name weighs 1."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.partition(":")
        if name not in _REWARDS:
            raise ValueError(f"{field}: unknown reward {name!r}; registered: {sorted(_REWARDS)}")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{field}: the weight of {name!r} must be a finite number, got {weight!r}")
        out.append((name, value))
    if not out:
        raise ValueError(f"{field}={spec!r} names no reward function")
    return out


class Rewards:
    """The weighted sum of the configured reward functions; also reports each one."""

    def __init__(self, spec: str, *, prompt_set, template: str, reward_model=None, field: str = "policy.rewards"):
        self.terms = parse_rewards(spec, field)
        self.fns = {}
        for name, _ in self.terms:
            self.fns[name] = _REWARDS[name](prompt_set=prompt_set, template=template, reward_model=reward_model)

    def __call__(self, inputs: RewardInputs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(total [n], {name: [n]})."""
        n = len(inputs.texts)
        parts = {}
        for name, _ in self.terms:
            value = np.asarray(self.fns[name](inputs), np.float64)
            if value.shape != (n,):
                raise ValueError(f"reward {name!r} returned shape {value.shape} for {n} responses; want ({n},)")
            if not np.all(np.isfinite(value)):
                bad = int(np.flatnonzero(~np.isfinite(value))[0])
                raise ValueError(f"reward {name!r} returned {value[bad]} for response {bad}: {inputs.texts[bad]!r}")
            parts[name] = value
        total = sum(weight * parts[name] for name, weight in self.terms)
        return np.asarray(total, np.float32), parts


class RewardFn:
    def __init__(self, *, prompt_set, template, reward_model=None):
        self.prompt_set, self.template, self.reward_model = prompt_set, template, reward_model

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        raise NotImplementedError


@register_reward("gold")
class Gold(RewardFn):
    def __call__(self, inputs):
        return [self.prompt_set.gold(p, t) for p, t in zip(inputs.prompts, inputs.texts, strict=True)]


@register_reward("exact_match")
class ExactMatch(RewardFn):
    def __call__(self, inputs):
        from research.data import instructions

        if any(p.example is None for p in inputs.prompts):
            raise ValueError("reward 'exact_match' needs instruction prompts (policy.prompts='instructions')")
        return [
            float(instructions.exact_match(p.example, t)) for p, t in zip(inputs.prompts, inputs.texts, strict=True)
        ]


@register_reward("format")
class Format(RewardFn):
    def __call__(self, inputs):
        out = []
        for p, text, stopped in zip(inputs.prompts, inputs.texts, inputs.stopped, strict=True):
            if self.template != "chat":
                out.append(float(bool(text.strip())))
                continue
            if p.example is not None and reasoning.is_reasoning_kind(p.example.kind):
                out.append(float(bool(stopped) and reasoning.parse(text).well_formed))
                continue
            shape = ANSWER_SHAPES.get(p.example.kind, r"\S.*") if p.example is not None else r"\S.*"
            out.append(float(bool(stopped) and re.fullmatch(shape, text.strip()) is not None))
        return out


@register_reward("tinyzero")
class TinyZero(RewardFn):
    """Reasoning prompts: 1 for a correct answer, 0.1 for a well-formed wrong one, 0 if malformed."""

    def __call__(self, inputs):
        out = []
        for p, text in zip(inputs.prompts, inputs.texts, strict=True):
            if p.example is None or not reasoning.is_reasoning_kind(p.example.kind):
                raise ValueError("reward 'tinyzero' needs reasoning prompts (policy.instruction_tasks='chase:...')")
            out.append(reasoning.tinyzero_reward(p.example.kind, p.example.prompt, p.example.response, text))
        return out


@register_reward("length_penalty")
class LengthPenalty(RewardFn):
    def __call__(self, inputs):
        return -np.asarray(inputs.lengths, np.float64) / inputs.max_new_tokens


@register_reward("reward_model")
class RewardModelReward(RewardFn):
    def __call__(self, inputs):
        if self.reward_model is None:
            raise ValueError("reward 'reward_model' needs policy.reward_workdir: a finished train.task='reward' run")
        return np.asarray(self.reward_model.score(inputs.samples))


class RewardModel:
    """A `reward` run's model scoring whole sequences: its scalar head at each row's last real token."""

    def __init__(self, run, mesh=None):
        self.run, self.mesh = run, mesh
        if "scalar" not in run.adapted.heads:
            raise ValueError(f"{run.workdir} is a train.task={run.config.train.task!r} run, not a reward model")

    def score(self, samples) -> jax.Array:
        """[n] scores of Samples (or any dict with tokens, positions, segment_ids [n, L])."""
        get = (lambda k: getattr(samples, k)) if hasattr(samples, "tokens") else samples.__getitem__
        return _score(self.run.adapted, self.run.params_dict(), get("tokens"), get("positions"), get("segment_ids"))


@functools.partial(jax.jit, static_argnames=("adapted",))
def _score(adapted, params, tokens, positions, segment_ids):
    scores = adapted.apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids, head="scalar")
    return last_real(scores, segment_ids)


def last_real(values, segment_ids):
    """values [n, L] -> [n] at each row's last non-padding position (rows may be left- or right-padded)."""
    idx = jnp.max(jnp.where(segment_ids != 0, jnp.arange(segment_ids.shape[1])[None, :], -1), axis=1)
    return jnp.take_along_axis(values, jnp.maximum(idx, 0)[:, None], axis=1)[:, 0]
