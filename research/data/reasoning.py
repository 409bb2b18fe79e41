"""Reasoning tasks with exact verifiers, the `<think>` format, and its rewards.

Tasks (every problem is drawn from an rng; the knobs set its difficulty):
  add        "Add: 4821+967"            trace, right to left, one column a step, carry in and out:
             "1+7+0=08 2+6+0=08 8+9+0=17 4+0+1=05"
             knobs: digits (of each operand, default 3)
  mul        "Multiply: 482*67"         trace: one partial product per digit of the second
             operand, then their sum: "482*7=3374 482*60=28920 3374+28920=32294"
             knobs: digits (first operand, default 3), digits2 (second, default 1)
  chase      "0>3 1>7 ... 9>1;x=4;k=6?" pointer chasing: from x, follow the arrows k times
             (the arrows, listed in node order, form one cycle through every node);
             trace: one hop a step, "4>2 2>9 9>1 ...". knobs: hops (default 4), nodes (<= 10)
  sum        "Sum: 12 7 30 5"           trace: running sums in a random order, so two
             correct traces of one problem differ: "12+30=42 42+7=49 49+5=54"
             knobs: count (default 4), digits (default 2)
  countdown  "Make 24 from 3 7 8 2"     reach the target with + - * / over the numbers,
             each used at most once; trace: "8-2=6 7-3=4 6*4=24"; answer: one
             expression, "(8-2)*(7-3)", checked by evaluating it (any correct one counts).
             knobs: count (numbers, default 4), max (largest number, default 10)

A kind string names a task and its knobs, and how often the response shows the trace:
    "chase:hops=6:think=0.2"   pointer chasing with 6 hops; 20% of the training
                               responses think first, the rest answer directly
research.data.instructions takes these kind strings beside its own kinds (sft.tasks,
policy.instruction_tasks), with its held-out split by prompt hash, packing and template.

The format: `<think>` trace `</think>` `<answer>` answer `</answer>`, or the answer tag
alone (a direct answer). The four tags are added tokens (ADDED_TOKENS, for
data.added_tokens): one id each. A response is well-formed when it is exactly that
(whitespace around it aside): at most one think block, closed, before exactly one
non-empty answer. The TinyZero reward (Pan et al. 2025) scores 1 for a correct
answer, 0.1 for a well-formed wrong one, 0 for anything malformed; accuracy is
1 / 0 on the same parse, so a correct number outside the tags never counts.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import itertools
import re

import numpy as np

from research.data import arithmetic

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ADDED_TOKENS = " ".join(TAGS)  # the value of data.added_tokens for every reasoning run
# The budget-control word budget forcing appends inside a trace (research/reason/budget.py). It starts with a
# letter no trace of these tasks writes, so its first token is emitted only where budget forcing redirects a close.
WAIT = "Wait "

_TAG = "|".join(re.escape(t) for t in TAGS)
_FORMAT = re.compile(
    rf"\s*(?:{re.escape(THINK_OPEN)}(?P<thought>(?:(?!{_TAG}).)*){re.escape(THINK_CLOSE)})?"
    rf"{re.escape(ANSWER_OPEN)}(?P<answer>(?:(?!{_TAG}).)*){re.escape(ANSWER_CLOSE)}\s*",
    re.DOTALL,
)


# --- The format ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Parsed:
    well_formed: bool
    answer: str | None  # the stripped text inside the answer tags (None when malformed)
    thought: str | None  # the text inside the think tags (None without a think block, or malformed)

    @property
    def thinks(self) -> bool:
        return self.thought is not None


def parse(text: str) -> Parsed:
    """The answer and trace of a response, or not well-formed (see the module docstring)."""
    match = _FORMAT.fullmatch(text)
    if match is None or not match["answer"].strip():
        return Parsed(False, None, None)
    return Parsed(True, match["answer"].strip(), match["thought"])


def format_response(answer: str, trace: tuple[str, ...] = (), *, think: bool) -> str:
    inner = f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
    return f"{THINK_OPEN}{' '.join(trace)}{THINK_CLOSE}{inner}" if think else inner


# --- Tasks -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str  # the reference answer (countdown: one of possibly many)
    trace: tuple[str, ...]  # the steps a trace shows, in order


class ReasoningTask:
    """A generator of problems and the verifier of an answer to one; knobs are its keyword arguments."""

    knobs: dict[str, tuple[int, int, int]]  # name -> (default, lowest, highest)

    def make(self, rng, **knobs) -> Problem:
        raise NotImplementedError

    def verify(self, prompt: str, reference: str, answer: str) -> bool:
        """Is `answer` (the stripped text inside the answer tags) right for `prompt`? Exact by default."""
        return answer == reference


TASKS: dict[str, ReasoningTask] = {}


def _register(name):
    def wrap(cls):
        TASKS[name] = cls()
        cls.name = name
        return cls

    return wrap


def _number(rng, digits: int) -> int:
    return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits))


@_register("add")
class Addition(ReasoningTask):
    knobs = {"digits": (3, 1, 12)}

    def make(self, rng, digits):
        a, b = _number(rng, digits), _number(rng, digits)
        trace, carry = [], 0
        xs, ys = str(a)[::-1], str(b)[::-1]
        for i in range(max(len(xs), len(ys))):
            x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
            trace.append(f"{x}+{y}+{carry}={x + y + carry:02d}")  # fixed width: every step is 8 characters
            carry = (x + y + carry) // 10
        return Problem(f"Add: {a}+{b}", str(a + b), tuple(trace))


@_register("mul")
class Multiplication(ReasoningTask):
    knobs = {"digits": (3, 1, 8), "digits2": (1, 1, 4)}

    def make(self, rng, digits, digits2):
        a, b = _number(rng, digits), _number(rng, digits2)
        parts = [(a, int(d) * 10**i) for i, d in enumerate(str(b)[::-1]) if d != "0"] or [(a, 0)]
        trace = [f"{x}*{y}={x * y}" for x, y in parts]
        if len(parts) > 1:
            trace.append("+".join(str(x * y) for x, y in parts) + f"={a * b}")
        return Problem(f"Multiply: {a}*{b}", str(a * b), tuple(trace))


@_register("chase")
class PointerChase(ReasoningTask):
    knobs = {"hops": (4, 1, 64), "nodes": (10, 2, 10)}

    def make(self, rng, hops, nodes):
        # One cycle through every node: k hops (k < nodes) never come back to x, and the answer is a
        # different node for each k, so neither "answer x" nor a short cycle is a shortcut.
        cycle = rng.permutation(nodes)
        target = np.empty(nodes, np.int64)
        target[cycle] = np.roll(cycle, -1)
        arrows = " ".join(f"{i}>{target[i]}" for i in range(nodes))  # in node order: one hop is one lookup
        x = int(rng.integers(nodes))
        trace = []
        for _ in range(hops):
            trace.append(f"{x}>{target[x]}")
            x = int(target[x])
        start = trace[0].split(">")[0]
        return Problem(f"{arrows};x={start};k={hops}?", str(x), tuple(trace))


@_register("sum")
class MultiSum(ReasoningTask):
    knobs = {"count": (4, 2, 16), "digits": (2, 1, 6)}

    def make(self, rng, count, digits):
        numbers = [_number(rng, digits) for _ in range(count)]
        order = [numbers[i] for i in rng.permutation(count)]  # any order is a correct trace
        trace, total = [], order[0]
        for x in order[1:]:
            trace.append(f"{total}+{x}={total + x}")
            total += x
        return Problem("Sum: " + " ".join(map(str, numbers)), str(total), tuple(trace))


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@_register("countdown")
class Countdown(ReasoningTask):
    knobs = {"count": (4, 2, 6), "max": (10, 2, 100)}

    def make(self, rng, count, max):  # noqa: A002 - the knob's name
        while True:
            numbers = [int(x) for x in rng.integers(1, max + 1, size=count)]
            pool = [(fractions.Fraction(x), str(x)) for x in numbers]
            trace = []
            while len(pool) > 1:  # combine two random entries until one is left: a solution by construction
                i, j = (int(k) for k in rng.choice(len(pool), size=2, replace=False))
                (a, ea), (b, eb) = pool[i], pool[j]
                op = "+-*/"[int(rng.integers(4))]
                if (op == "/" and (b == 0 or a % b)) or (op == "-" and a < b):
                    break  # keep every intermediate a non-negative integer, as the trace writes them
                value = _OPS[op](a, b)
                trace.append(f"{a}{op}{b}={value}")
                pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, f"({ea}{op}{eb})")]
            else:
                value, expr = pool[0]
                if 1 <= value <= 1000 and value.denominator == 1:
                    return Problem(f"Make {value} from {' '.join(map(str, numbers))}", expr[1:-1], tuple(trace))

    def verify(self, prompt, reference, answer):
        numbers, target = parse_countdown(prompt)
        used, value = evaluate_expression(answer)
        if value is None or value != target:
            return False
        remaining = list(numbers)
        for x in used:
            if x not in remaining:
                return False
            remaining.remove(x)
        return True


def parse_countdown(prompt: str) -> tuple[tuple[int, ...], int]:
    match = re.fullmatch(r"Make (\d+) from ((?:\d+ ?)+)", prompt.strip())
    if match is None:
        raise ValueError(f"not a countdown prompt: {prompt!r}")
    return tuple(int(x) for x in match[2].split()), int(match[1])


def evaluate_expression(text: str) -> tuple[list[int], fractions.Fraction | None]:
    """(the integer literals used, the exact value) of an arithmetic expression; value None if it is not
    one (names, calls, powers, signs, division by zero, a syntax error). Never evaluates anything but + - * /."""
    used: list[int] = []
    try:
        return used, arithmetic.evaluate(text, operators=arithmetic.FOUR_OPERATIONS, integers_only=True, used=used)
    except arithmetic.CalculatorError:
        return used, None


_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def countdown_step(pool: tuple[int, ...], step: str) -> tuple[int, ...] | None:
    """The numbers left after one trace step "a op b=c" (a and b taken from `pool`, c added), or None
    when the step is not of that shape, uses a number the pool lacks, or its arithmetic is wrong."""
    match = _STEP.fullmatch(step.strip())
    if match is None:
        return None
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    rest = list(pool)
    for x in (a, b):
        if x not in rest:
            return None
        rest.remove(x)
    if (op == "/" and b == 0) or _OPS[op](fractions.Fraction(a), b) != c:
        return None
    return tuple(sorted([*rest, c]))


def countdown_trace_reaches(prompt: str, thought: str | None) -> bool:
    """Is `thought` a sequence of valid steps over the prompt's numbers that produces the target?"""
    numbers, target = parse_countdown(prompt)
    pool = tuple(sorted(numbers))
    for step in (thought or "").split():
        pool = countdown_step(pool, step)
        if pool is None:
            return False
        if target in pool:
            return True
    return False


@functools.lru_cache(maxsize=65536)
def solve_countdown(numbers: tuple[int, ...], target: int) -> str | None:
    """An expression reaching `target` from `numbers` (each at most once), or None: exhaustive search."""
    start = tuple(sorted((fractions.Fraction(int(x)), str(int(x))) for x in numbers))
    target = int(target)
    seen = set()

    def search(pool):
        key = tuple(sorted(v for v, _ in pool))
        if key in seen:
            return None
        seen.add(key)
        for value, expr in pool:
            if value == target:
                return expr
        for (i, (a, ea)), (j, (b, eb)) in itertools.permutations(enumerate(pool), 2):
            rest = [p for k, p in enumerate(pool) if k not in (i, j)]
            for op in "+-*/":
                if op == "/" and b == 0:
                    continue
                found = search([*rest, (_OPS[op](a, b), f"({ea}{op}{eb})")])
                if found:
                    return found
        return None

    found = search(list(start))
    return found[1:-1] if found and found.startswith("(") and found.endswith(")") else found


# --- Kind strings ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    task: str
    knobs: tuple[tuple[str, int], ...]
    think: float  # the fraction of training responses that show the trace

    def make(self, rng) -> tuple[Problem, bool]:
        """A problem and whether its training response thinks."""
        problem = TASKS[self.task].make(rng, **dict(self.knobs))
        return problem, bool(rng.random() < self.think)


def is_reasoning_kind(kind: str) -> bool:
    return kind.split(":", 1)[0] in TASKS


def parse_knobs(kind: str, knobs: dict, *, other: tuple = ()) -> tuple[dict, dict]:
    """'name:a=3:b=1' -> ({knob: int}, {other key: raw string}), every integer knob at its default unless given.

    knobs: {key: (default, low, high)}; `other` keys are returned raw for the caller to check. Unknown
    keys, a part without '=' and out-of-range values are errors naming the kind and the knob.
    """
    name, *parts = kind.split(":")
    values = {k: default for k, (default, _, _) in knobs.items()}
    rest = {}
    for part in parts:
        key, eq, raw = part.partition("=")
        if not eq:
            raise ValueError(f"{kind!r}: {part!r} must be knob=value")
        if key in other:
            rest[key] = raw
            continue
        if key not in knobs:
            also = f" and {', '.join(other)}" if other else ""
            raise ValueError(f"{kind!r}: {name} has no knob {key!r}; its knobs: {sorted(knobs)}{also}")
        _, low, high = knobs[key]
        if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
            raise ValueError(f"{kind!r}: {key}={raw!r} must be an integer in [{low}, {high}]")
        values[key] = int(raw)
    return values, rest


@functools.lru_cache(maxsize=256)
def parse_kind(kind: str) -> Kind:
    """'chase:hops=6:think=0.2' -> Kind; unknown tasks or knobs and out-of-range values are errors naming them."""
    name = kind.split(":", 1)[0]
    if name not in TASKS:
        raise ValueError(f"{kind!r}: unknown reasoning task {name!r}; choose one of {sorted(TASKS)}")
    values, rest = parse_knobs(kind, TASKS[name].knobs, other=("think",))
    think = 1.0
    if "think" in rest:
        try:
            think = float(rest["think"])
        except ValueError:
            think = -1.0
        if not 0 <= think <= 1:
            raise ValueError(f"{kind!r}: think={rest['think']!r} must be a fraction in [0, 1]")
    return Kind(name, tuple(sorted(values.items())), think)


def candidate(kind: str, rng) -> tuple[str, str]:
    """(prompt, training response) of one problem of `kind`."""
    problem, think = parse_kind(kind).make(rng)
    return problem.prompt, format_response(problem.answer, problem.trace, think=think)


# --- Scoring ---------------------------------------------------------------------------------------


def reference_answer(response: str) -> str:
    """The answer inside a training response (what make_example wrote)."""
    parsed = parse(response)
    if not parsed.well_formed:
        raise ValueError(f"not a well-formed reference response: {response!r}")
    return parsed.answer


def is_correct(kind: str, prompt: str, reference_response: str, output: str) -> bool:
    """The verifier: `output` is well-formed and its answer right (the task's own check)."""
    parsed = parse(output)
    if not parsed.well_formed:
        return False
    return TASKS[parse_kind(kind).task].verify(prompt, reference_answer(reference_response), parsed.answer)


def tinyzero_reward(kind: str, prompt: str, reference_response: str, output: str) -> float:
    """1 correct, 0.1 well-formed but wrong, 0 malformed."""
    if not parse(output).well_formed:
        return 0.0
    return 1.0 if is_correct(kind, prompt, reference_response, output) else 0.1
