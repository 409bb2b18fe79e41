"""Invented entities (research.data.entities): the knowledge base, its questions and their gold plans."""

import numpy as np
import pytest

from research.apps.agent import Tools, calculator, lookup_tool, run_agent
from research.data.entities import make_world


def test_world_is_seeded_and_its_passages_hold_the_answers():
    world = make_world(30, seed=3)
    assert world == make_world(30, seed=3) and world != make_world(30, seed=4)
    assert len({e.name for e in world.entities}) == 30
    by_name = dict(zip((e.name for e in world.entities), world.passages(), strict=True))
    for q in world.questions(np.random.default_rng(0), 50):
        assert q.answer in by_name[q.entities[0]] and q.plan[-1] == ("finish", q.answer)
    with pytest.raises(ValueError, match="num_entities=1"):
        make_world(1)


def test_following_a_two_step_gold_plan_reaches_the_answer():
    world = make_world(20, seed=0)
    tools = Tools({"lookup": lookup_tool(world.table()), "calculator": calculator})
    for q in world.two_step(np.random.default_rng(1), 20):
        script = iter([f"Action: {tool}[{arg}]\n" for tool, arg in q.plan])
        traj = run_agent(lambda _, s=script: next(s), tools, q.text, max_steps=len(q.plan))
        assert traj.answer == q.answer and all(s.ok for s in traj.steps)
        lookups = [s.observation for s in traj.steps if s.tool == "lookup"]
        assert q.plan[2][1] == f"{lookups[0]} {q.plan[2][1].split()[1]} {lookups[1]}"  # numbers from the lookups
