"""Reasoning tasks and the <think> format: verifiers on known answers and on malformed outputs."""

import itertools

import numpy as np
import pytest

from research.data import instructions, reasoning
from research.data.reasoning import parse, parse_kind, tinyzero_reward

KINDS = ("add:digits=4", "mul:digits=3:digits2=2", "chase:hops=5", "sum:count=5", "countdown:count=4")


@pytest.mark.parametrize(
    "text, well_formed, answer, thinks",
    [
        ("<answer>42</answer>", True, "42", False),
        ("<think>1+2=3</think><answer>3</answer>", True, "3", True),
        ("  <think></think><answer> 7 </answer>\n", True, "7", True),  # an empty thought is still a thought
        ("42", False, None, False),  # no tag
        ("<answer>1</answer><answer>2</answer>", False, None, False),  # several answer tags
        ("<think>1+2=3<answer>3</answer>", False, None, False),  # a trace that never closes
        ("<think>a</think><think>b</think><answer>3</answer>", False, None, False),
        ("<answer></answer>", False, None, False),  # an empty answer
        ("<answer>3</answer> and more", False, None, False),
        ("<answer>3</answer><think>x</think>", False, None, False),  # thinking after the answer
        ("", False, None, False),
    ],
)
def test_parse(text, well_formed, answer, thinks):
    parsed = parse(text)
    assert (parsed.well_formed, parsed.answer, parsed.thinks) == (well_formed, answer, thinks)


def test_known_answers():
    rng = np.random.default_rng(0)
    add = reasoning.TASKS["add"].make(rng, digits=3)
    a, b = (int(x) for x in add.prompt.removeprefix("Add: ").split("+"))
    assert add.answer == str(a + b) and len(add.trace) == 3
    # The column trace is the schoolbook sum: its last digits, read back, are the answer's digits.
    digits = [int(step.split("=")[1]) % 10 for step in add.trace]
    assert "".join(map(str, digits[::-1])) == str(a + b)[-3:]
    mul = reasoning.TASKS["mul"].make(rng, digits=3, digits2=2)
    x, y = (int(v) for v in mul.prompt.removeprefix("Multiply: ").split("*"))
    assert mul.answer == str(x * y) and mul.trace[-1].endswith(f"={x * y}")
    s = reasoning.TASKS["sum"].make(rng, count=5, digits=2)
    numbers = [int(v) for v in s.prompt.removeprefix("Sum: ").split()]
    assert s.answer == str(sum(numbers)) and len(s.trace) == 4
    # Pointer chasing against a hand-written table: 0>1 1>2 2>0, from 0, 4 hops -> 1.
    chase = reasoning.TASKS["chase"].make(np.random.default_rng(3), hops=4, nodes=10)
    arrows, start, hops = chase.prompt[:-1].split(";")
    table = dict(pair.split(">") for pair in arrows.split())
    x = start.removeprefix("x=")
    for _ in range(int(hops.removeprefix("k="))):
        x = table[x]
    assert chase.answer == x and len(chase.trace) == 4 and chase.answer != start.removeprefix("x=")


def test_sum_traces_differ_across_problems_of_one_prompt_order():
    """The sum's trace adds in a random order: over draws, the first addend is not always the first number."""
    firsts = []
    for seed in range(20):
        p = reasoning.TASKS["sum"].make(np.random.default_rng(seed), count=4, digits=2)
        firsts.append(p.trace[0].split("+")[0] == p.prompt.split()[1])
    assert 0 < sum(firsts) < 20


@pytest.mark.parametrize("kind", KINDS)
def test_training_responses_verify_and_splits_are_disjoint(kind):
    train = [instructions.make_example(i, split="train", seed=0, kinds=(kind,)) for i in range(60)]
    held = [instructions.make_example(i, split="eval", seed=0, kinds=(kind,)) for i in range(20)]
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    for e in train + held:
        assert instructions.exact_match(e, e.response), e
        assert tinyzero_reward(e.kind, e.prompt, e.response, e.response) == 1.0
        assert instructions.split_of(e.prompt) == ("eval" if e in held else "train")


def test_think_fraction_of_a_mix():
    kind = "chase:hops=3:think=0.25"
    thinks = [parse(instructions.make_example(i, split="train", seed=0, kinds=(kind,)).response).thinks
              for i in range(400)]  # fmt: skip
    assert 0.18 < np.mean(thinks) < 0.32
    never = [instructions.make_example(i, split="train", seed=0, kinds=("chase:think=0",)) for i in range(50)]
    assert not any(parse(e.response).thinks for e in never)


def test_tinyzero_reward_on_hand_scored_outputs():
    e = instructions.make_example(0, split="eval", seed=0, kinds=("add:digits=2",))
    right = reasoning.reference_answer(e.response)
    wrong = str(int(right) + 1)
    scored = {
        f"<think>x</think><answer>{right}</answer>": 1.0,
        f"<answer>{right}</answer>": 1.0,
        f"<answer>{wrong}</answer>": 0.1,
        f"<think>x</think><answer>{wrong}</answer>": 0.1,
        right: 0.0,  # correct, but no tag
        f"<answer>{right}</answer><answer>{right}</answer>": 0.0,
        f"<think>{right}<answer>{right}</answer>": 0.0,
    }
    for output, reward in scored.items():
        assert tinyzero_reward(e.kind, e.prompt, e.response, output) == reward, output
        assert instructions.exact_match(e, output) == (reward == 1.0)


def test_countdown_verifier_accepts_any_solution_and_refuses_cheats():
    prompt = "Make 24 from 3 7 8 2"
    ok = ["(8-2)*(7-3)", "8*3*(7-2-2)" and "(7-3)*(8-2)", "3*8", "(7+8-3)*2"]
    bad = ["24", "8*3*1", "(8-2)*(7-3)+0", "3*8*2/2", "8*8/2-8", "__import__('os')", "2**3*3", "8/0", "(8-2"]
    for answer in ok:
        assert reasoning.TASKS["countdown"].verify(prompt, "", answer), answer
    for answer in bad:
        assert not reasoning.TASKS["countdown"].verify(prompt, "", answer), answer


def test_countdown_solver_against_brute_force_and_no_solution():
    assert reasoning.solve_countdown((1, 1), 100) is None
    assert reasoning.solve_countdown((2, 3), 6) in ("2*3", "3*2")
    for seed in range(30):
        rng = np.random.default_rng(seed)
        numbers, target = tuple(int(x) for x in rng.integers(1, 8, size=3)), int(rng.integers(1, 60))
        found = reasoning.solve_countdown(numbers, target)
        # Brute force over every expression shape of up to three numbers.
        reachable = set()
        for k in range(1, 4):
            for pick in itertools.permutations(numbers, k):
                for ops in itertools.product("+-*/", repeat=k - 1):
                    if k == 1:
                        shapes = [f"{pick[0]}"]
                    elif k == 2:
                        shapes = [f"{pick[0]}{ops[0]}{pick[1]}"]
                    else:
                        a, b, c = pick
                        shapes = [f"({a}{ops[0]}{b}){ops[1]}{c}", f"{a}{ops[0]}({b}{ops[1]}{c})"]
                    for shape in shapes:
                        _, value = reasoning.evaluate_expression(shape)
                        if value is not None and value == target:
                            reachable.add(shape)
        assert (found is not None) == bool(reachable), (numbers, target)
        if found:
            assert reasoning.TASKS["countdown"].verify(f"Make {target} from {' '.join(map(str, numbers))}", "", found)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("maze", "unknown"),
        ("chase:hops=0", r"hops='0' must be an integer in \[1, 64\]"),
        ("chase:depth=3", "no knob 'depth'"),
        ("chase:hops", "knob=value"),
        ("add:think=1.5", "fraction"),
        ("sum:count=x", "count='x'"),
    ],
)
def test_bad_kinds_name_the_knob(kind, message):
    with pytest.raises(ValueError, match=message):
        if reasoning.is_reasoning_kind(kind):
            parse_kind(kind)
        else:
            instructions.check_kinds((kind,))
    if reasoning.is_reasoning_kind(kind):
        with pytest.raises(ValueError, match=message):
            instructions.check_kinds((kind,))


def test_countdown_steps_and_traces():
    pool = (2, 3, 7, 8)
    assert reasoning.countdown_step(pool, "8-2=6") == (3, 6, 7)
    assert reasoning.countdown_step(pool, "8/2=4") == (3, 4, 7)
    for bad in ("8-2=5", "9-2=7", "2-2=0", "8-2", "8 - 2 = 6", "3/2=1", "8^2=64", ""):
        assert reasoning.countdown_step(pool, bad) is None, bad
    prompt = "Make 24 from 3 7 8 2"
    assert reasoning.countdown_trace_reaches(prompt, "8-2=6 7-3=4 6*4=24")
    assert not reasoning.countdown_trace_reaches(prompt, "8-2=6 6*4=24")  # 4 is not in the pool
    assert not reasoning.countdown_trace_reaches(prompt, "8-2=6 7-3=4")  # never reaches 24
    assert not reasoning.countdown_trace_reaches(prompt, None)
    for i in range(20):  # every training trace reaches its target
        e = instructions.make_example(i, split="train", seed=0, kinds=("countdown:count=4",))
        assert reasoning.countdown_trace_reaches(e.prompt, parse(e.response).thought), e
