"""What post-training reads: prompt sets with gold rewards, preference pairs, and how both become tokens.

Templates (`post.template`) say how a prompt and a response are laid out:
  plain   prompt tokens, then " " + response tokens; no special tokens. For a
          language model pretrained on raw text (the toy sentiment language):
          the response continues the prompt, e.g. for a fixed number of tokens.
  chat    [BOS] prompt [SEP] response [EOS], research.data.instructions'
          template: the model answers and stops at [EOS].

Prompt sets (`policy.prompts`), each with a gold reward that knows the truth:
  sentiment     prompts of the toy language (research/data/sentiment.py); gold
                reward (#positive - #negative) / #words of the response.
  instructions  held-in/held-out prompts of research.data.instructions (kinds from
                policy.instruction_tasks); gold reward 1 for the exact answer, else 0
                (the instructions set's own verifier).
A prompt's index and split alone determine it, so every process and every resumed
run sees the same ones.

Preference pairs (`preference.source`): generated from the toy language with
Bradley-Terry labels at a chosen noise (research.data.sentiment.preference_pairs),
or read from JSONL files (research.data.preferences.read_pairs).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.data import instructions, preferences, reasoning, sentiment

TEMPLATES = ("plain", "chat")
PROMPT_SETS = ("sentiment", "instructions")


def check_template(template: str, field: str = "post.template") -> None:
    if template not in TEMPLATES:
        raise ValueError(f"{field}={template!r}; choose one of {list(TEMPLATES)}")


def prompt_tokens(tokenizer, template: str, prompt: str) -> np.ndarray:
    """What the sampler is fed for `prompt` (int32)."""
    check_template(template)
    if template == "chat":
        return instructions.prompt_tokens(tokenizer, prompt)
    return np.asarray(tokenizer.encode(prompt), np.int32)


def response_tokens(tokenizer, template: str, response: str) -> np.ndarray:
    """The tokens of `response` after its prompt (int32); chat responses end with [EOS]."""
    check_template(template)
    if template == "chat":
        return np.concatenate([tokenizer.encode(response), [tokenizer.eos_id]]).astype(np.int32)
    return np.asarray(tokenizer.encode(" " + response), np.int32)


def stop_tokens(tokenizer, template: str) -> tuple[int, ...]:
    return (tokenizer.eos_id,) if template == "chat" else ()


def response_text(tokenizer, template: str, tokens) -> str:
    """Decoded response tokens (special tokens dropped; a plain response loses its leading space)."""
    text = tokenizer.decode([int(t) for t in tokens])
    return text if template == "chat" else text.strip()


# --- Prompt sets -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    example: instructions.Example | None = None  # instructions: the example (its exact answer)


class PromptSet:
    """Prompts by (split, index) and the gold reward of a response to one."""

    def prompt(self, split: str, index: int) -> Prompt:
        raise NotImplementedError

    def gold(self, prompt: Prompt, response: str) -> float:
        raise NotImplementedError

    def prompts(self, split: str, n: int, start: int = 0) -> list[Prompt]:
        return [self.prompt(split, i) for i in range(start, start + n)]

    def describe(self, prompt: Prompt, response: str) -> dict[str, float]:
        """Per-response statistics evaluation averages beside the rewards (e.g. how often it thinks)."""
        del prompt, response
        return {}


@dataclasses.dataclass(frozen=True)
class SentimentPrompts(PromptSet):
    prompt_words: int
    seed: int = 0
    language: sentiment.SentimentLanguage = dataclasses.field(default_factory=sentiment.SentimentLanguage.default)

    def prompt(self, split, index):
        return Prompt(self.language.prompt(split, index, prompt_words=self.prompt_words, seed=self.seed))

    def gold(self, prompt, response):
        return self.language.gold_reward(response)


@dataclasses.dataclass(frozen=True)
class InstructionPrompts(PromptSet):
    kinds: tuple[str, ...]
    seed: int = 0

    def prompt(self, split, index):
        seed = self.seed if split == "train" else instructions.EVAL_SEED
        example = instructions.make_example(index, split=split, seed=seed, kinds=self.kinds)
        return Prompt(example.prompt, example)

    def gold(self, prompt, response):
        return float(instructions.exact_match(prompt.example, response))

    def describe(self, prompt, response):
        if not reasoning.is_reasoning_kind(prompt.example.kind):
            return {}
        parsed = reasoning.parse(response)
        return {"thinks": float(parsed.thinks), "well_formed": float(parsed.well_formed)}


def prompt_set(policy, seed: int) -> PromptSet:
    """The prompt set config.policy describes (policy.prompts and its options)."""
    if policy.prompts == "sentiment":
        if policy.prompt_words < 1:
            raise ValueError(f"policy.prompt_words={policy.prompt_words} must be >= 1")
        return SentimentPrompts(policy.prompt_words, seed)
    if policy.prompts == "instructions":
        kinds = tuple(k.strip() for k in policy.instruction_tasks.split(",") if k.strip())
        return InstructionPrompts(instructions.check_kinds(kinds, "policy.instruction_tasks"), seed)
    raise ValueError(f"policy.prompts={policy.prompts!r}; choose one of {list(PROMPT_SETS)}")


# --- Preference pairs ------------------------------------------------------------------------------


def preference_pairs(p, split: str, seed: int) -> list[preferences.PreferencePair]:
    """config.preference's pairs for `split` ("train" or "eval")."""
    if p.source == "sentiment":
        n = p.num_train_pairs if split == "train" else p.num_eval_pairs
        return sentiment.preference_pairs(
            sentiment.SentimentLanguage.default(),
            n,
            split=split,
            prompt_words=p.prompt_words,
            continuation_words=p.continuation_words,
            label_noise=p.label_noise,
            bt_scale=float("inf") if p.bt_scale <= 0 else p.bt_scale,
            seed=seed if split == "train" else instructions.EVAL_SEED,
        )
    path = p.source if split == "train" else p.eval_source
    if not path:
        raise ValueError("preference.eval_source must name a JSONL file of held-out pairs when preference.source does")
    return preferences.read_pairs(path)


def pair_arrays(tokenizer, template: str, pairs, seq_len: int, *, field: str = "data.seq_len") -> dict:
    """Pairs -> int32 arrays [n, 2, seq_len] (axis 1: chosen, rejected), right-padded:
    tokens, positions, segment_ids (1 on real tokens), response_mask (1 on response tokens).

    Raises naming `field` when a prompt + response does not fit.
    """
    n = len(pairs)
    out = {k: np.zeros((n, 2, seq_len), np.int32) for k in ("tokens", "positions", "segment_ids", "response_mask")}
    for i, pair in enumerate(pairs):
        head = prompt_tokens(tokenizer, template, pair.prompt)
        for j, response in enumerate((pair.chosen, pair.rejected)):
            tail = response_tokens(tokenizer, template, response)
            length = len(head) + len(tail)
            if length > seq_len:
                raise ValueError(f"preference pair {i} is {length} tokens long, more than {field}={seq_len}")
            out["tokens"][i, j, :length] = np.concatenate([head, tail])
            out["positions"][i, j, :length] = np.arange(length)
            out["segment_ids"][i, j, :length] = 1
            out["response_mask"][i, j, len(head) : length] = 1
    return out
