"""Tree of thoughts (Yao et al. 2023): breadth-first beam search over partial thoughts, counted in model calls.

    result = tree_search(root, propose, step, value, is_solution, ToTConfig(breadth=5, beam=3, depth=4, max_calls=60))

The search knows nothing of models; four callables define the problem:
  propose(states, k) -> one list of up to k candidate next thoughts per state (e.g. k sampled lines)
  step(state, thought) -> the state with the thought applied, or None when the thought is invalid
  value(states) -> one score per state (a verifier, or a learned scorer)
  is_solution(state) -> bool (the ground-truth check, free)

One level: take the beam (best first), expand as many of its states as the
remaining budget allows, each with `breadth` proposals; drop repeated thoughts
of one state (the first occurrence stays) and invalid ones (step -> None);
value the children; stop if a child is a solution (the first in insertion
order: parent order in the beam, then thought order), whatever its value;
drop children valued below `prune_below`; keep the best `beam` children
(equal values keep insertion order) as the next beam. The search stops at the
first solution, after `depth` levels, when the beam is empty (everything
invalid or pruned), or when the budget cannot pay for one more expansion.

How calls are counted, so that methods compare at an equal budget. One call is
one sampled generation:
  chain of thought      1 call per sampled response
  self-consistency      N calls per prompt (research/reason/consistency.py)
  tree of thoughts      `breadth` calls per expanded state (one per sampled thought, repeats and invalid
                        thoughts included: they were paid for), plus `value_calls_per_state` per child valued:
                        0 for a verifier (no model call), 1 for a learned scorer that reads each state once
Expanding a state may cost at most breadth * (1 + value_calls_per_state)
calls, and the search expands a state only when the calls so far plus that
bound fit in `max_calls`, so `calls <= max_calls` always (a budget below the
bound expands nothing and spends 0 calls). With value_calls_per_state > 0 the
bound is reached only when no thought repeats or is invalid, so some budget
may go unspent. A call is not a fixed number of tokens: a thought is usually a
line where a CoT response is a whole solution, so equal calls are not equal
compute; count tokens beside calls where that matters.

Chain of thought is the degenerate tree: beam = 1 and breadth = 1 samples one
thought, applies it and continues from the result, level after level, i.e. a
single greedy chain (the value only matters through prune_below; with the
default -inf the chain stops only at a solution, at `depth`, at an invalid
thought, or at the budget).

The root is never valued (that would cost a call with a learned scorer and
decides nothing): `best` starts as the root with best_value -inf and is then
the highest-valued state seen (the first of equal values), pruned ones included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class ToTConfig:
    breadth: int  # thoughts sampled per expanded state (= model calls per expansion)
    beam: int  # states kept per level
    depth: int  # levels at most
    max_calls: int  # model calls at most, proposals plus counted value calls
    value_calls_per_state: int = 0  # 0: a verifier; 1: a learned scorer, one call per valued state
    prune_below: float = -math.inf  # children valued below this are dropped

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        checks = (
            ("breadth", self.breadth >= 1, ">= 1"),
            ("beam", self.beam >= 1, ">= 1"),
            ("depth", self.depth >= 1, ">= 1"),
            ("max_calls", self.max_calls >= 1, ">= 1"),
            ("value_calls_per_state", self.value_calls_per_state >= 0, ">= 0"),
            ("prune_below", not math.isnan(self.prune_below), "a number (not NaN)"),
        )
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"ToTConfig.{name}={getattr(self, name)!r} must be {want}")

    @property
    def expansion_bound(self) -> int:
        """The most calls one expansion can cost: breadth proposals and a value for each of breadth children."""
        return self.breadth * (1 + self.value_calls_per_state)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    solution: Any  # the first solution found, or None
    calls: int  # model calls spent (<= max_calls)
    expanded: int  # states expanded (proposals asked for)
    levels: int  # levels with at least one expansion
    best: Any  # the highest-valued state seen (the root when nothing was valued)
    best_value: float  # its value (-inf for the unvalued root)


def _distinct(thoughts) -> list:
    """Thoughts without repeats (by ==), first occurrences in order."""
    out = []
    for t in thoughts:
        if t not in out:
            out.append(t)
    return out


def tree_search(
    root,
    propose: Callable[[list, int], list[list]],
    step: Callable[[Any, Any], Any],
    value: Callable[[list], list[float]],
    is_solution: Callable[[Any], bool],
    config: ToTConfig,
) -> SearchResult:
    """Breadth-first beam search from root (module docstring: the level, the stops and the call count)."""
    config.validate()
    calls = expanded = levels = 0
    best, best_value = root, -math.inf

    def result(solution):
        return SearchResult(solution, calls, expanded, levels, best, best_value)

    if is_solution(root):
        return result(root)
    beam = [root]
    while beam and levels < config.depth:
        affordable = (config.max_calls - calls) // config.expansion_bound
        parents = beam[: min(len(beam), affordable)]  # the beam is best first: the budget goes to the best
        if not parents:
            break
        proposals = propose(parents, config.breadth)
        if len(proposals) != len(parents):
            raise ValueError(f"propose returned {len(proposals)} lists of thoughts for {len(parents)} states")
        calls += config.breadth * len(parents)
        expanded += len(parents)
        levels += 1

        children = []
        for parent, thoughts in zip(parents, proposals, strict=True):
            thoughts = list(thoughts)
            if len(thoughts) > config.breadth:
                raise ValueError(f"propose returned {len(thoughts)} thoughts for one state, over k={config.breadth}")
            for thought in _distinct(thoughts):
                child = step(parent, thought)
                if child is not None:
                    children.append(child)
        if not children:
            break
        values = [float(v) for v in value(children)]
        if len(values) != len(children) or any(math.isnan(v) for v in values):
            raise ValueError(f"value must return one number (not NaN) per state, got {values} for {len(children)}")
        calls += config.value_calls_per_state * len(children)
        for child, v in zip(children, values, strict=True):
            if v > best_value:
                best, best_value = child, v
        for child in children:
            if is_solution(child):
                return result(child)
        kept = [(v, i) for i, v in enumerate(values) if not v < config.prune_below]
        kept.sort(key=lambda vi: (-vi[0], vi[1]))
        beam = [children[i] for _, i in kept[: config.beam]]
    return result(None)
