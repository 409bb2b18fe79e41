"""LLM-as-a-judge: verdicts read from a decoder's own probabilities, bias probes, and their mitigations.

    judge = Judge(model, params, tokenizer)                 # any decoder: a run, an HF import
    p = judge.pairwise(questions, answers_a, answers_b)      # P(first is better) per pair
    fair = swap_average(p, judge.pairwise(questions, answers_b, answers_a))
    scores = judge.pointwise(questions, answers, scale=5)    # expected score in 1..5
    judge = Judge.from_run(load_run(workdir))                # an SFT run: asked in its chat template
    model, params = research.models.hf.load_pretrained(folder); Judge(model, unbox(params), tokenizer)

A verdict is the next-token distribution after the prompt, renormalised over
the choice tokens ("A"/"B", or "1".."k"), so it is a probability even when the
model would rather say something else, and no text has to be parsed. A short
justification can be sampled after the verdict (`justify`). The verdict can also be
generated as text and parsed (`generated_verdicts`, `parse_verdict`); an output that
names no choice is None, NaN as a probability (`text_preference`), and every metric
below counts it as a failure (`failure_rate`), never an exception.

Biases (Zheng et al. 2023, "Judging LLM-as-a-judge") as numbers over arrays of
P(first better) for each pair in both orders:
  position:  `position_consistency` (same winner after swapping) and
             `first_position_win_rate` (0.5 for an unbiased judge);
  verbosity: how often a padded copy beats the same content unpadded;
  self-enhancement: a judge's preference for its own base's outputs (measured by
             the experiment, comparing judges of two bases).
Mitigations: `swap_average` (exact for a pure position preference),
`length_penalized` (a per-token penalty on the logit), and a judge from
another base model.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

PAIRWISE_TEMPLATE = (
    "Which answer is better? Criteria: {criteria}\nQuestion: {question}\nAnswer A: {first}\nAnswer B: {second}\n"
    "Better answer:"
)
POINTWISE_TEMPLATE = (
    "Rate the answer from 1 to {scale}. Criteria: {criteria}\nQuestion: {question}\nAnswer: {answer}\nScore:"
)
DEFAULT_CRITERIA = "correct and concise"


def choice_ids(tokenizer, choices, *, field: str = "choices", space: bool = True) -> list[int]:
    """The one token id of each choice (as it follows the prompt: after a space, or with space=False at
    the start of a response); ValueError naming `field` when a choice is not one token."""
    ids = []
    for c in choices:
        encoded = list(tokenizer.encode(" " + c if space else c))
        if len(encoded) > 1 and tokenizer.decode(encoded[:1]) == " ":  # the space is a token of its own
            encoded = encoded[1:]
        if len(encoded) != 1:
            raise ValueError(f"{field}: {c!r} is {len(encoded)} tokens for this tokenizer; each choice must be one")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{field}: {list(choices)} map to the same token ids {ids}")
    return ids


def next_token_logprobs(model, params, prompts: list[list[int]], *, pad_id: int = 0) -> np.ndarray:
    """[n, vocab] float32 log-probabilities of the token after each prompt (one forward pass per
    batch; right padding, which a causal model never attends to from the prompt's last token)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be non-empty token lists")
    longest = max(len(p) for p in prompts)
    length = 1 << max(3, (longest - 1).bit_length())  # power-of-two buckets: few compiles
    if length > model.config.max_len:
        if longest > model.config.max_len:
            raise ValueError(f"a prompt has {longest} tokens; the model's max_len is {model.config.max_len}")
        length = model.config.max_len
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)], segments[i, : len(p)] = p, 1
    last = np.array([len(p) - 1 for p in prompts], np.int32)
    return np.asarray(_last_logprobs(model, params, tokens, segments, last))


@functools.partial(jax.jit, static_argnums=0)
def _last_logprobs(model, params, tokens, segments, last):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits = model.apply({"params": params}, tokens, positions=positions, segment_ids=segments)
    picked = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return jax.nn.log_softmax(picked, axis=-1)


def renormalised(logprobs: np.ndarray, ids: list[int]) -> np.ndarray:
    """[n, len(ids)] probabilities of the choices, renormalised to sum to 1."""
    picked = np.asarray(logprobs)[:, ids]
    picked = np.exp(picked - picked.max(axis=1, keepdims=True))
    return picked / picked.sum(axis=1, keepdims=True)


class Judge:
    """A decoder (model, params, tokenizer) used as a judge; see the module docstring.

    model: DecoderLM-like (config.max_len, apply(tokens, positions=, segment_ids=) -> logits).
    """

    def __init__(self, model, params, tokenizer, *, criteria: str = DEFAULT_CRITERIA, batch_size: int = 64,
                 chat: bool = False, template: str = PAIRWISE_TEMPLATE):  # fmt: skip
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.criteria, self.batch_size, self.chat, self.template = criteria, batch_size, chat, template
        # chat: the verdict is the first token of the response, not a word after "Better answer:".
        self.pair_ids = choice_ids(tokenizer, ("A", "B"), space=not chat)

    @classmethod
    def from_run(cls, run, **kwargs) -> Judge:
        """A judge of a loaded run (research.train.runs.load_run); an instruction-tuned (sft) run is asked
        in its chat template, [BOS] prompt [SEP], as it was trained."""
        model, params = run.for_decoding()
        kwargs.setdefault("chat", run.config.train.task == "sft")
        return cls(model, params, run.tokenizer, **kwargs)

    def _encode(self, text: str) -> list[int]:
        if self.chat:
            from research.data.instructions import prompt_tokens

            return [int(t) for t in prompt_tokens(self.tokenizer, text)]
        return [int(t) for t in self.tokenizer.encode(text)]  # as research.sample and the post tasks encode

    def _choice_probabilities(self, prompts: list[str], ids: list[int]) -> np.ndarray:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            encoded = [self._encode(p) for p in prompts[i : i + self.batch_size]]
            rows = len(encoded)
            # Every batch padded to batch_size rows (repeating a prompt): one compile per length bucket.
            encoded += encoded[:1] * (self.batch_size - rows)
            out.append(renormalised(next_token_logprobs(self.model, self.params, encoded), ids)[:rows])
        return np.concatenate(out) if out else np.zeros((0, len(ids)))

    def pairwise_prompts(self, questions, first, second) -> list[str]:
        _same_length(questions=questions, first=first, second=second)
        return [self.template.format(criteria=self.criteria, question=q, first=a, second=b)
                for q, a, b in zip(questions, first, second, strict=True)]  # fmt: skip

    def pairwise(self, questions, first, second) -> np.ndarray:
        """[n] P(the first-shown answer is better), from P("A") vs P("B") after the prompt."""
        return self._choice_probabilities(self.pairwise_prompts(questions, first, second), self.pair_ids)[:, 0]

    def pointwise(self, questions, answers, *, scale: int = 5) -> np.ndarray:
        """[n] expected score sum_s s * P(s) over the choice tokens "1".."scale" (scale <= 9)."""
        if not 2 <= scale <= 9:
            raise ValueError(f"scale={scale} must be in [2, 9] (one token per score)")
        _same_length(questions=questions, answers=answers)
        ids = choice_ids(self.tokenizer, [str(s) for s in range(1, scale + 1)], field="scale", space=not self.chat)
        prompts = [POINTWISE_TEMPLATE.format(scale=scale, criteria=self.criteria, question=q, answer=a)
                   for q, a in zip(questions, answers, strict=True)]  # fmt: skip
        return self._choice_probabilities(prompts, ids) @ np.arange(1, scale + 1)

    def justify(self, prompts: list[str], verdicts: list[str], *, max_new_tokens: int = 32, seed: int = 0) -> list[str]:
        """A short justification sampled greedily after each prompt and its verdict ("A"/"B"/a score):
        the first line after "Because"."""
        from research.decode import SamplingConfig, sample

        if self.chat:  # the response starts with the verdict
            encoded = [
                self._encode(p) + self._encode_plain(f"{v}\nBecause") for p, v in zip(prompts, verdicts, strict=True)
            ]
        else:
            encoded = [self._encode(f"{p} {v}\nBecause") for p, v in zip(prompts, verdicts, strict=True)]
        stop = (self.tokenizer.eos_id,) if self.chat else ()
        config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=stop)
        out = sample(self.model, self.params, encoded, config, jax.random.key(seed))
        return [t.split("\n")[0].strip() for t in out.texts(self.tokenizer, skip_ids=stop)]

    def _encode_plain(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def generated_verdicts(self, prompts: list[str], *, max_new_tokens: int = 4) -> list[str | None]:
        """The verdict as text: greedy tokens after each prompt, parsed (`parse_verdict`); None where the
        model wrote no verdict, which the metrics count as a failure (see `text_preference`)."""
        from research.decode import SamplingConfig, sample

        stop = (self.tokenizer.eos_id,) if self.chat else ()
        config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=stop)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            encoded = [self._encode(p) for p in prompts[i : i + self.batch_size]]
            texts = sample(self.model, self.params, encoded, config, jax.random.key(0)).texts(self.tokenizer)
            out.extend(parse_verdict(t) for t in texts)
        return out


def parse_verdict(text: str, choices=("A", "B")) -> str | None:
    """The choice a generated verdict names: its first word, bare ("A", "B.", "A\nBecause ...") or as
    "Answer A"; None when there is no such word (a failure, never an exception)."""
    words = re.findall(r"[A-Za-z0-9]+", text[:64])
    if words[:1] == ["Answer"]:
        words = words[1:]
    return words[0] if words and words[0] in choices else None


def text_preference(verdicts) -> np.ndarray:
    """Generated verdicts ("A"/"B"/None) as P(first better): 1, 0, or NaN for no verdict."""
    return np.array([1.0 if v == "A" else 0.0 if v == "B" else np.nan for v in verdicts])


def _same_length(**arrays) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"these must have one entry per pair: {lengths}")


# --- bias probes and mitigations over P(first better) ---------------------------------------------------


def swap_average(p_ab, p_ba) -> np.ndarray:
    """P(A better) averaged over both orders: p_ab = P(first) with A first, p_ba = P(first) with B first.
    A judge that always prefers one position gets exactly 0.5. NaN (no verdict) in either order stays NaN."""
    return (np.asarray(p_ab, np.float64) + 1.0 - np.asarray(p_ba, np.float64)) / 2.0


def failure_rate(p) -> float:
    """Fraction of verdicts that are missing (NaN: a judge output with no parseable verdict)."""
    return float(np.mean(np.isnan(np.asarray(p, np.float64))))


def position_consistency(p_ab, p_ba) -> float:
    """Fraction of pairs whose winner is the same answer in both orders (a missing verdict: inconsistent)."""
    p_ab, p_ba = np.asarray(p_ab), np.asarray(p_ba)
    a_wins_both = (p_ab > 0.5) & (p_ba < 0.5)
    b_wins_both = (p_ab < 0.5) & (p_ba > 0.5)
    return float(np.mean(a_wins_both | b_wins_both))


def first_position_win_rate(p_ab, p_ba) -> float:
    """How often the first-shown answer wins, over both orders (0.5: no position bias on average; a missing
    verdict is no win)."""
    return float(np.mean(np.concatenate([np.asarray(p_ab), np.asarray(p_ba)]) > 0.5))


def length_penalized(p_first, len_first, len_second, *, per_token: float) -> np.ndarray:
    """P(first better) after subtracting per_token * (len_first - len_second) from its logit."""
    p = np.clip(np.asarray(p_first, np.float64), 1e-12, 1 - 1e-12)
    logit = np.log(p) - np.log1p(-p) - per_token * (np.asarray(len_first) - np.asarray(len_second))
    return 1.0 / (1.0 + np.exp(-logit))


TIE = 1e-9  # |p - 0.5| below this is a tie: a penalty that exactly cancels a preference lands on 0.5 +- rounding


def win_rate(p_first) -> float:
    """Credit of the first answer: 1 per pair it wins (p > 0.5), 0.5 per tie, 0 per loss or missing verdict."""
    p = np.asarray(p_first, np.float64)
    tie = np.abs(p - 0.5) < TIE
    return float(np.mean(np.where(tie, 0.5, np.where(p > 0.5, 1.0, 0.0))))


def agreement(p_first, gold_first) -> float:
    """Agreement of the verdict (p > 0.5: first better) with the gold preference (True: first is better):
    1 per match, 0.5 per tie (p = 0.5: no preference), 0 per mismatch or missing verdict (NaN)."""
    p, gold = np.asarray(p_first, np.float64), np.asarray(gold_first, bool)
    if p.shape != gold.shape:
        raise ValueError(f"p_first has shape {p.shape}, gold_first {gold.shape}: one gold preference per pair")
    right = np.where(gold, p > 0.5, p < 0.5)
    return float(np.mean(np.where(np.abs(p - 0.5) < TIE, 0.5, right.astype(np.float64))))
