"""Tree of thoughts on a Countdown toy with a brute-force solver: solutions, the budget, the greedy chain, pruning."""

import dataclasses
import math
import random

import pytest

from research.reason.tree import SearchResult, ToTConfig, tree_search

# Countdown: combine two of the numbers with + - * (the larger first for -) until the target is among them.
OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
MOST = 18  # legal thoughts of four numbers: 6 pairs x 3 operations


@dataclasses.dataclass(frozen=True)
class State:
    numbers: tuple  # sorted multiset
    path: tuple = ()  # (x, op, y, result) steps from the root


def legal(state):
    """Every distinct legal thought (x, op, y), x >= y, in a fixed order."""
    out, nums = [], state.numbers
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            x, y = max(nums[i], nums[j]), min(nums[i], nums[j])
            for op in OPS:
                if (x, op, y) not in out:
                    out.append((x, op, y))
    return out


def step(state, thought):
    x, op, y = thought
    rest = list(state.numbers)
    for n in (x, y):
        if n not in rest:
            return None  # uses a number the state does not hold: invalid
        rest.remove(n)
    result = OPS[op](x, y)
    return State(tuple(sorted([*rest, result])), (*state.path, (x, op, y, result)))


def propose_all(states, k):
    """All legal thoughts of each state, shuffled deterministically (seeded by the state), cut to k."""
    out = []
    for s in states:
        thoughts = legal(s)
        random.Random(repr(s.numbers)).shuffle(thoughts)
        out.append(thoughts[:k])
    return out


def closeness(target):
    return lambda states: [-min(abs(n - target) for n in s.numbers) for s in states]


def reaches(target):
    return lambda s: target in s.numbers


def min_steps(numbers, target):
    """Brute force: the fewest combinations that put target among the numbers, or None when none does."""
    level = {tuple(sorted(numbers))}
    for depth in range(len(numbers)):
        if any(target in nums for nums in level):
            return depth
        level = {step(State(nums), t).numbers for nums in level for t in legal(State(nums))}
    return None


def assert_valid_path(root, solution, target):
    nums = list(root)
    for x, op, y, result in solution.path:
        assert x >= y and result == OPS[op](x, y)
        nums.remove(x)
        nums.remove(y)
        nums.append(result)
    assert sorted(nums) == list(solution.numbers) and target in nums


class Counted:
    """Wraps propose / step / value and counts what the search asked for."""

    def __init__(self, propose=propose_all, value=None):
        self.proposed, self.valued, self.stepped = [], [], []
        self._propose, self._value = propose, value

    def propose(self, states, k):
        self.proposed.extend(states)
        return self._propose(states, k)

    def step(self, state, thought):
        self.stepped.append(thought)
        return step(state, thought)

    def value(self, states):
        assert all(s is not None for s in states)
        self.valued.extend(states)
        return self._value(states)


def search(numbers, target, counted=None, value=None, **config):
    value = value or closeness(target)
    counted = counted or Counted(value=value)
    counted._value = counted._value or value
    result = tree_search(
        State(tuple(sorted(numbers))),
        counted.propose,
        counted.step,
        counted.value,
        reaches(target),
        ToTConfig(**config),
    )
    assert isinstance(result, SearchResult)
    return result, counted


NO_SOLUTION = ((1, 1, 1), 100)  # the largest reachable number is 3
assert min_steps(*NO_SOLUTION) is None


def instances(count, seed=0):
    rng = random.Random(seed)
    return [(tuple(rng.randint(1, 9) for _ in range(rng.choice([3, 4]))), rng.randint(10, 60)) for _ in range(count)]


def test_finds_a_solution_with_a_valid_path():
    numbers, target = (1, 2, 3, 4), 36
    assert min_steps(numbers, target) == 3  # (1 + 2) * 3 * 4
    result, counted = search(numbers, target, breadth=MOST, beam=15, depth=3, max_calls=10_000)
    assert result.solution is not None and result.levels == 3
    assert_valid_path(numbers, result.solution, target)
    assert result.calls == MOST * result.expanded == MOST * len(counted.proposed) <= 10_000
    # closeness to the target is a weak value here (it favours 4 * 3 first): a narrow beam loses the way
    narrow, _ = search(numbers, target, breadth=MOST, beam=10, depth=3, max_calls=10_000)
    assert narrow.solution is None and narrow.best_value < 0


def test_exhaustive_beam_finds_a_solution_exactly_when_one_exists_at_the_fewest_steps():
    """breadth = every legal thought and an unbounded beam is breadth-first search: it solves an instance iff the
    brute-force solver does, at the level of the fewest combinations (the known optimum)."""
    solved = unsolved = 0
    for numbers, target in instances(30):
        want = min_steps(numbers, target)
        result, _ = search(numbers, target, breadth=MOST, beam=10**6, depth=3, max_calls=10**6)
        assert (result.solution is not None) == (want is not None), (numbers, target)
        if want is None:
            unsolved += 1
        else:
            solved += 1
            assert result.levels == want
            assert_valid_path(numbers, result.solution, target)
    assert solved >= 5 and unsolved >= 5  # both kinds were checked


def test_a_perfect_verifier_needs_a_beam_of_one():
    """Valued by exact solvability (the brute-force solver), beam 1 never loses the way to a solution."""
    for numbers, target in instances(20, seed=1):
        solvable = lambda states, target=target: [float(min_steps(s.numbers, target) is not None) for s in states]
        result, counted = search(numbers, target, value=solvable, breadth=MOST, beam=1, depth=3, max_calls=10**6)
        assert (result.solution is not None) == (min_steps(numbers, target) is not None)
        if result.solution is not None:
            assert_valid_path(numbers, result.solution, target)
        assert result.expanded == result.levels == len(counted.proposed)


def test_no_solution_returns_none_within_the_budget():
    result, counted = search(*NO_SOLUTION, breadth=MOST, beam=100, depth=10, max_calls=10_000)
    assert result.solution is None
    assert result.levels == 3  # 3 numbers -> 1 number after two levels; the third finds no thought and stops
    assert result.calls == MOST * result.expanded <= 10_000
    assert result.best_value == -97 and result.best.numbers == (3,)  # (1 + 1) + 1 is the closest to 100
    for budget in (1, 17, 18, 19, 40, 100, 500):
        result, _ = search(*NO_SOLUTION, breadth=MOST, beam=100, depth=10, max_calls=budget)
        assert result.solution is None and result.calls <= budget


@pytest.mark.parametrize("value_calls", [0, 1, 2])
def test_calls_never_exceed_the_budget(value_calls):
    breadth = 4
    bound = breadth * (1 + value_calls)
    for numbers, target in [*instances(6, seed=2), NO_SOLUTION]:
        for budget in range(1, 90):
            counted = Counted()
            result, _ = search(
                numbers,
                target,
                counted,
                breadth=breadth,
                beam=3,
                depth=4,
                max_calls=budget,
                value_calls_per_state=value_calls,
            )
            assert result.calls <= budget, (numbers, target, budget)
            # the count is honest: k calls per expanded state and value_calls per valued state
            assert result.calls == breadth * len(counted.proposed) + value_calls * len(counted.valued)
            assert result.expanded == len(counted.proposed)
            if budget < bound:  # too small for one expansion: nothing happens
                assert (result.calls, result.expanded, result.levels, result.solution) == (0, 0, 0, None)
                assert result.best == State(tuple(sorted(numbers))) and result.best_value == -math.inf


def test_a_partial_level_expands_the_best_states_the_budget_allows():
    numbers, target = NO_SOLUTION
    value = closeness(target)
    full, counted_full = search(numbers, target, breadth=2, beam=3, depth=2, max_calls=100)
    assert full.expanded == 3 and full.calls == 6  # root, then its two children
    part, counted = search(numbers, target, breadth=2, beam=3, depth=2, max_calls=5)
    assert (part.expanded, part.calls, part.levels) == (2, 4, 2)  # the second level could pay for one state
    level_2 = counted_full.proposed[1:]
    assert counted.proposed[1] == max(level_2, key=lambda s: value([s])[0])  # the better-valued one


def greedy_chain(root, propose, is_solution, depth, max_calls):
    """Chain of thought by hand: sample one thought, apply it, continue; one call per thought."""
    state, chain, calls = root, [], 0
    for _ in range(depth):
        if calls + 1 > max_calls:
            break
        chain.append(state)
        (thoughts,) = propose([state], 1)
        calls += 1
        child = step(state, thoughts[0]) if thoughts else None
        if child is None:
            break
        state = child
        if is_solution(state):
            return state, chain, calls
    return None, chain, calls


def test_beam_1_breadth_1_is_a_greedy_chain():
    noise = random.Random(0)
    chains = solved = 0
    for numbers, target in instances(40, seed=3):
        for budget in (1, 2, 3, 10):
            root = State(tuple(sorted(numbers)))
            want, chain, calls = greedy_chain(root, propose_all, reaches(target), 3, budget)
            noisy = lambda states: [noise.random() for _ in states]  # with one child the value cannot matter
            result, counted = search(numbers, target, value=noisy, breadth=1, beam=1, depth=3, max_calls=budget)
            assert counted.proposed == chain
            assert (result.solution, result.calls, result.expanded) == (want, calls, len(chain))
            chains += len(chain) > 1
            solved += want is not None
    assert chains and solved  # chains longer than one step, and some that reach the target


def test_pruning_drops_states_valued_below_prune_below():
    numbers, target = (2, 3, 5, 7), 40
    value = closeness(target)
    cut = -20.0
    _, loose = search(numbers, target, breadth=MOST, beam=4, depth=3, max_calls=10**4)
    assert any(value([s])[0] < cut for s in loose.proposed[1:])  # without pruning such states are expanded
    _, pruned = search(numbers, target, breadth=MOST, beam=4, depth=3, max_calls=10**4, prune_below=cut)
    assert pruned.proposed[1:] and all(value([s])[0] >= cut for s in pruned.proposed[1:])


def test_pruning_everything_stops_the_search():
    numbers, target = (1, 2, 3, 4), 24  # no single combination reaches 24
    result, counted = search(numbers, target, breadth=MOST, beam=4, depth=3, max_calls=10**4, prune_below=1.0)
    assert (result.solution, result.levels, result.expanded, result.calls) == (None, 1, 1, MOST)
    assert len(counted.valued) == len(legal(State((1, 2, 3, 4))))
    assert result.best in counted.valued and result.best_value == max(closeness(target)(counted.valued))


def test_a_solution_is_returned_whatever_its_value():
    """is_solution is the ground truth: a solution valued below prune_below is still the answer."""
    numbers, target = (3, 4), 12
    result, _ = search(
        numbers, target, value=lambda s: [-1.0] * len(s), breadth=3, beam=1, depth=1, max_calls=3, prune_below=0.0
    )
    assert result.solution == State((12,), ((4, "*", 3, 12),))


def test_invalid_and_repeated_thoughts():
    """Thoughts that step rejects never reach value; repeats are stepped once; both are still paid for."""
    bogus = (99, "+", 98)

    def noisy_propose(states, k):
        return [([bogus, t[0], t[0], bogus, *t[1:]])[:k] for t in propose_all(states, k)]

    numbers, target = (1, 2, 3, 4), 24
    counted = Counted(propose=noisy_propose)
    result, _ = search(numbers, target, counted, breadth=8, beam=4, depth=3, max_calls=10**4, value_calls_per_state=1)
    assert result.solution is not None and bogus not in [p[:3] for p in result.solution.path]
    assert_valid_path(numbers, result.solution, target)
    per_state = [noisy_propose([s], 8)[0] for s in counted.proposed]
    distinct = [list(dict.fromkeys(ts)) for ts in per_state]
    assert len(counted.stepped) == sum(map(len, distinct))  # each distinct thought stepped once
    valid = sum(sum(step(s, t) is not None for t in ts) for s, ts in zip(counted.proposed, distinct, strict=True))
    assert len(counted.valued) == valid  # only valid children are valued (Counted.value asserts none is None)
    assert result.calls == 8 * len(counted.proposed) + len(counted.valued)


def test_only_invalid_thoughts_end_the_search_at_once():
    counted = Counted(propose=lambda states, k: [[(99, "+", 98)] * k for _ in states])
    result, _ = search((1, 2, 3), 6, counted, breadth=3, beam=2, depth=5, max_calls=100)
    assert (result.solution, result.levels, result.expanded, result.calls) == (None, 1, 1, 3)
    assert counted.valued == [] and result.best_value == -math.inf


def test_equal_values_keep_insertion_order():
    numbers, target = (1, 2, 3, 4), 1000
    flat = lambda states: [0.0] * len(states)
    result, counted = search(numbers, target, value=flat, breadth=MOST, beam=3, depth=2, max_calls=10**4)
    root = State((1, 2, 3, 4))
    first_children = [step(root, t) for t in propose_all([root], MOST)[0]][:3]
    assert counted.proposed[1:] == first_children
    assert result.best == first_children[0]  # the first of equal values


def test_a_root_that_is_a_solution_costs_nothing():
    result, counted = search((5, 24), 24, breadth=3, beam=2, depth=2, max_calls=10)
    assert result.solution == State((5, 24)) and result.calls == 0 and counted.proposed == []


@pytest.mark.parametrize(
    "field, bad",
    [
        ("breadth", 0),
        ("beam", 0),
        ("depth", 0),
        ("max_calls", 0),
        ("breadth", -1),
        ("max_calls", -5),
        ("value_calls_per_state", -1),
        ("prune_below", math.nan),
    ],
)
def test_config_validation_names_the_field(field, bad):
    good = dict(breadth=2, beam=2, depth=2, max_calls=10)
    with pytest.raises(ValueError, match=field):
        ToTConfig(**{**good, field: bad})


def test_a_proposer_that_breaks_the_contract_raises():
    root = State((1, 2, 3))
    config = ToTConfig(breadth=2, beam=1, depth=1, max_calls=10)
    with pytest.raises(ValueError, match="propose"):
        tree_search(root, lambda s, k: [], step, closeness(6), reaches(6), config)
    with pytest.raises(ValueError, match="propose"):
        tree_search(root, lambda s, k: [legal(root)[:3]], step, closeness(6), reaches(6), config)
    with pytest.raises(ValueError, match="value"):
        tree_search(root, propose_all, step, lambda s: [0.0], reaches(7), config)
