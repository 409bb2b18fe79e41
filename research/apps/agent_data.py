"""SFT data for ReAct agents: the "react" instruction kind, gold trajectories over research.data.entities worlds.

    react:hops=2                       a ReAct trajectory of a two-step question (two lookups, a calculation)
    react:hops=1                       ... of a single-hop question (one lookup)
    react:hops=2:direct=1:fresh=0      the same question answered directly, on the fixed world

Knobs (integers): hops 1|2; direct 0 (trajectory) | 1 (the answer alone); fresh 1 (each example
from a newly drawn world, so a trajectory's values can only come from its observations) | 0 (the
fixed world make_world(entities, seed=world), whose facts a direct answer must have memorised);
entities, the worlds' size; world, the fixed world's seed. A direct example needs fresh=0: a
fresh world's facts cannot be known without tools.

Prompts select the format: "Question: <q>" is answered with a trajectory, "Question: <q>\\nAnswer
directly." with the answer alone. A trajectory is the one research.apps.agent.run_agent writes when
the model follows the gold plan (it is produced by that loop, so training and inference see the same
text); its observations and the question line are the tools' and the prompt's, so `Example.segments`
gives them loss_mask 0 (agent.training_segments).
"""

from __future__ import annotations

import re

from research.apps import agent
from research.apps.retrieval import BM25
from research.data import instructions
from research.data.entities import SYLLABLES, Question, World, make_world
from research.data.reasoning import parse_knobs

KNOBS = {"hops": (2, 1, 2), "direct": (0, 0, 1), "fresh": (1, 0, 1), "entities": (24, 2, 1000), "world": (0, 0, 10**6)}
DIRECT_SUFFIX = "\nAnswer directly."
# The syllables names are made of, as tokenizer added tokens (data.added_tokens): a name is then 2-3 tokens
# instead of 4-12 bytes, so a byte-level model copies it into an action in a few steps, not a dozen.
NAME_TOKENS = tuple(SYLLABLES) + tuple(s.capitalize() for s in SYLLABLES)
_FINISH = re.compile(r"^Action:\s*finish\[(.*)\]\s*$", re.MULTILINE)


def knobs(kind: str) -> dict:
    values, _ = parse_knobs(kind, KNOBS)
    if values["direct"] and values["fresh"]:
        raise ValueError(f"{kind!r}: direct=1 needs fresh=0 (a fresh world's facts cannot be known without tools)")
    return values


def world_tools(world: World, *, search: bool = True) -> agent.Tools:
    """The registry: the safe calculator, lookup by '<attribute> of <name>', and BM25 search over the passages."""
    tools = {"calculator": agent.calculator, "lookup": agent.lookup_tool(world.table())}
    if search:
        passages = world.passages()
        tools["search"] = agent.search_tool(BM25(passages), passages)
    return agent.Tools(tools)


def agent_prompt(question: Question) -> str:
    return f"Question: {question.text}"


def direct_prompt(question: Question) -> str:
    return f"Question: {question.text}{DIRECT_SUFFIX}"


def _thoughts(plan) -> list[str | None]:
    """One short thought per plan step: which number is needed next, or that it is time to compute.
    Short on purpose: the trajectory must fit the tiny models' context, and the action says the rest."""
    lookups = sum(tool == "lookup" for tool, _ in plan)
    out, seen = [], 0
    for tool, _ in plan:
        if tool == "lookup":
            seen += 1
            out.append("I need a fact." if lookups == 1 else f"I need fact {seen} of {lookups}.")
        else:
            out.append("Now compute." if tool == "calculator" else None)  # finish: the action says it all
    return out


def gold_trajectory(question: Question, tools: agent.Tools) -> agent.Trajectory:
    """The trajectory of a policy that follows the gold plan, written by the agent loop itself."""
    plan = iter(zip(question.plan, _thoughts(question.plan), strict=True))

    def follow(_text: str) -> str:
        (tool, arg), thought = next(plan)
        return (f"Thought: {thought}\n" if thought else "") + f"Action: {tool}[{arg}]\n"

    return agent.run_agent(follow, tools, question.text, max_steps=len(question.plan))


def questions(world: World, rng, n: int, hops: int) -> list[Question]:
    return world.two_step(rng, n) if hops == 2 else world.questions(rng, n)


def make(kind: str, rng) -> instructions.Example:
    k = knobs(kind)
    seed = int(rng.integers(2**31)) if k["fresh"] else k["world"]
    world = _fixed_world(k["entities"], seed) if not k["fresh"] else make_world(k["entities"], seed=seed)
    (question,) = questions(world, rng, 1, k["hops"])
    if k["direct"]:
        return instructions.Example(kind, direct_prompt(question), question.answer)
    trajectory = gold_trajectory(question, world_tools(world, search=False))
    rest = agent.training_segments(trajectory.text)[1:]  # [0] is the question line: the prompt
    return instructions.Example(kind, agent_prompt(question), "".join(t for t, _ in rest), tuple(rest))


_WORLDS: dict = {}


def _fixed_world(entities: int, seed: int) -> World:
    """The fixed world, made once per process (every example of a kind shares it)."""
    if (entities, seed) not in _WORLDS:
        _WORLDS[entities, seed] = make_world(entities, seed=seed)
    return _WORLDS[entities, seed]


def answer_of(kind: str, output: str) -> str | None:
    """The answer a generation gives: the finish[...] argument of a trajectory, or a direct answer's text."""
    if knobs(kind)["direct"]:
        return output.strip()
    found = _FINISH.search(output)
    return found[1].strip() if found else None


def verify(example: instructions.Example, output: str) -> bool:
    return answer_of(example.kind, output) == answer_of(example.kind, example.response)


instructions.register_kind("react", make, check=knobs, verify=verify)
