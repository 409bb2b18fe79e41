"""Pairs with a known gold preference for training and probing judges (research/apps/judge.py).

Questions are sums with one exact answer ("What is 4 + 8?"); an answer states a value
in one of STYLES, possibly padded (filler before it, or the answer said twice). The
correct one states the sum, the wrong one a nearby value. So the gold preference is
known exactly and agreement with it stands in for agreement with human raters.

Kinds registered with research.data.instructions (the judge's SFT data and its bases):
  judge:digits=1:first=50:longer=50:pad=50:own=0:ownrate=0
      prompt: TEMPLATE (what Judge(template=TEMPLATE) asks) with a correct and a wrong answer;
      response: "A" or "B" (the correct one), then "\nBecause 4 + 8 = 12." (the justification);
      first:   % of pairs with the correct answer shown first (50: no position cue);
      pad:     % of pairs with exactly one answer padded; longer: % of those where it is the correct
               one (50: length tells nothing);
      own, ownrate: % of pairs whose correct answer is in STYLES[own] and the wrong one in another
               style (0: styles drawn independently), the familiarity a model has with its own
               outputs, planted to give a judge a self-preference to detect;
  judge_answer:digits=1:style=1
      "What is 4 + 8?" -> STYLES[style] with the sum: a generator base with its own style.
Every knob at its default is the balanced set; other values plant a controlled bias.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

from research.apps import judge
from research.data import instructions
from research.data.reasoning import parse_knobs

# Ways of stating value v of "a + b". The generators G and H answer in styles 1 and 2; style 3 is the
# "other source" of the self-preference probe; the three have nearly the same length.
STYLES = ("{v}", "The answer is {v}.", "It comes to {v}.", "My result is {v}.", "{a} + {b} = {v}")
G_STYLE, H_STYLE, OTHER_STYLE = 1, 2, 3
FILLERS = ("Let me see. ", "Well, I think ", "OK, so ")
PADDINGS = ("filler", "repeat")
CRITERIA = "correct"
# A compact judge prompt (Judge(template=...)): a tiny byte-level judge reads every character of it.
TEMPLATE = "Criteria: {criteria}\nQ: {question}\nA: {first}\nB: {second}\nBetter:"
_JUDGE_KNOBS = {"digits": (1, 1, 3), "first": (50, 0, 100), "longer": (50, 0, 100), "pad": (50, 0, 100),
                "own": (0, 0, len(STYLES) - 1), "ownrate": (0, 0, 100)}  # fmt: skip
_ANSWER_KNOBS = {"digits": (1, 1, 3), "style": (G_STYLE, 0, len(STYLES) - 1)}


@dataclasses.dataclass(frozen=True)
class Pair:
    """One judged pair: `correct` and `wrong` answers to `question`, and the reference solution (ROUGE's)."""

    question: str
    correct: str
    wrong: str
    a: int
    b: int

    @property
    def value(self) -> int:
        return self.a + self.b

    @property
    def reference(self) -> str:
        return f"{self.a} + {self.b} = {self.value}"

    def shown(self, correct_first: bool) -> tuple[str, str]:
        return (self.correct, self.wrong) if correct_first else (self.wrong, self.correct)


def question(rng, digits: int) -> tuple[int, int, str]:
    a, b = (int(x) for x in rng.integers(0, 10**digits, size=2))
    return a, b, f"What is {a} + {b}?"


def state(style: int, a: int, b: int, v: int) -> str:
    return STYLES[style].format(a=a, b=b, v=v)


def pad(answer: str, how: str, rng) -> str:
    """The same content, longer: a filler sentence before it, or the answer said twice."""
    if how == "filler":
        return FILLERS[int(rng.integers(len(FILLERS)))] + answer
    if how == "repeat":
        return f"{answer} {answer}"
    raise ValueError(f"padding={how!r}; choose one of {PADDINGS}")


def wrong_value(v: int, rng) -> int:
    """A nearby wrong value (never v, never negative)."""
    while True:
        w = v + int(rng.choice([-10, -3, -2, -1, 1, 2, 3, 10]))
        if w >= 0 and w != v:
            return w


def make_pair(rng, *, digits=1, pad_percent=50, longer=50, own=0, ownrate=0) -> Pair:
    a, b, q = question(rng, digits)
    v, w = a + b, wrong_value(a + b, rng)
    if rng.random() * 100 < ownrate:
        good_style = own
        bad_style = int(rng.choice([s for s in range(len(STYLES)) if s != own]))
    else:
        good_style, bad_style = (int(s) for s in rng.integers(len(STYLES), size=2))
    correct, wrong = state(good_style, a, b, v), state(bad_style, a, b, w)
    if rng.random() * 100 < pad_percent:
        how = PADDINGS[int(rng.integers(len(PADDINGS)))]
        if rng.random() * 100 < longer:
            correct = pad(correct, how, rng)
        else:
            wrong = pad(wrong, how, rng)
    return Pair(q, correct, wrong, a, b)


def pair_prompt(question_text: str, first: str, second: str) -> str:
    return TEMPLATE.format(criteria=CRITERIA, question=question_text, first=first, second=second)


def justification(pair: Pair) -> str:
    return f"{pair.a} + {pair.b} = {pair.value}."


def pair_key(question_text: str, first: str, second: str) -> str:
    """The pair whatever its order: what the held-out split hashes, so no order of a test pair is trained on."""
    return "\x00".join([question_text, *sorted([first, second])])


def held_out(pair: Pair) -> bool:
    return instructions.split_of(pair_key(pair.question, pair.correct, pair.wrong)) == "eval"


def _make_judge(kind: str, rng) -> instructions.Example:
    k, _ = parse_knobs(kind, _JUDGE_KNOBS)
    while True:  # the held-out pairs (10 %) are never trained on, in either order
        pair = make_pair(rng, digits=k["digits"], pad_percent=k["pad"], longer=k["longer"], own=k["own"],
                         ownrate=k["ownrate"])  # fmt: skip
        if not held_out(pair):
            break
    correct_first = bool(rng.random() * 100 < k["first"])
    verdict = "A" if correct_first else "B"
    return instructions.Example(kind, pair_prompt(pair.question, *pair.shown(correct_first)),
                                f"{verdict}\nBecause {justification(pair)}")  # fmt: skip


def _verify_judge(example, output: str) -> bool:
    return judge.parse_verdict(output) == example.response[0]


def _make_answer(kind: str, rng) -> instructions.Example:
    k, _ = parse_knobs(kind, _ANSWER_KNOBS)
    a, b, q = question(rng, k["digits"])
    return instructions.Example(kind, q, state(k["style"], a, b, a + b))


def stated_value(answer: str) -> int | None:
    """The last number an answer states (every style ends with its value), None when there is none."""
    numbers = re.findall(r"\d+", answer)
    return int(numbers[-1]) if numbers else None


def _verify_answer(example, output: str) -> bool:
    return stated_value(output) == stated_value(example.response)


instructions.register_kind("judge", _make_judge, check=lambda kind: parse_knobs(kind, _JUDGE_KNOBS),
                           verify=_verify_judge)  # fmt: skip
instructions.register_kind("judge_answer", _make_answer, check=lambda kind: parse_knobs(kind, _ANSWER_KNOBS),
                           verify=_verify_answer)  # fmt: skip


# --- Held-out probe sets ------------------------------------------------------------------------------
# Gold pairs come from the held-out split (`held_out`). Probe pairs of two correct answers (verbosity,
# self-preference) are never in a judge's training data, which always pairs a correct answer with a
# wrong one; they are split between "val" (choosing the length penalty) and "test" by a hash.


def _part_of(key: str) -> str:
    return "test" if hashlib.sha1(key.encode()).digest()[0] % 2 == 0 else "val"


def _check_part(part: str) -> None:
    if part not in ("val", "test"):
        raise ValueError(f"part={part!r}; choose 'val' or 'test'")


def gold_pairs(n: int, *, seed: int, part: str, digits: int = 1) -> list[Pair]:
    """n balanced correct-vs-wrong held-out pairs of `part` (no judge trained on them, in either order)."""
    _check_part(part)
    rng, out = np.random.default_rng([seed, 7]), []
    while len(out) < n:
        p = make_pair(rng, digits=digits)
        if held_out(p) and _part_of(pair_key(p.question, p.correct, p.wrong)) == part:
            out.append(p)
    return out


def padded_pairs(n: int, how: str, *, seed: int, part: str, digits: int = 1) -> list[tuple[str, str, str]]:
    """n (question, plain, padded): one correct answer and its padded copy, equal content, one longer."""
    _check_part(part)
    if how not in PADDINGS:
        raise ValueError(f"padding={how!r}; choose one of {PADDINGS}")
    rng, out = np.random.default_rng([seed, 8, PADDINGS.index(how)]), []
    while len(out) < n:
        a, b, q = question(rng, digits)
        plain = state(int(rng.integers(len(STYLES))), a, b, a + b)
        longer = pad(plain, how, rng)
        if _part_of(pair_key(q, plain, longer)) == part:
            out.append((q, plain, longer))
    return out


def questions(*, part: str, digits: int = 1) -> list[tuple[int, int, str]]:
    """Every question (a, b, text) of `part` (for the self-preference probe: generators answer them)."""
    _check_part(part)
    out = [(a, b, f"What is {a} + {b}?") for a in range(10**digits) for b in range(10**digits)]
    return [x for x in out if _part_of(x[2]) == part]
