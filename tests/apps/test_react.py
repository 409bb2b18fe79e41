"""The "react" SFT kind (research.apps.agent_data), the chat-template generator, and experiments/react.py's pieces."""

import re

import numpy as np
import pytest

from research.apps import agent, agent_data
from research.data import instructions as ins
from research.data.entities import make_world
from research.experiment import load_experiment
from research.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def test_the_rendered_loss_mask_excludes_every_observation_token():
    for i in range(6):
        e = ins.make_example(i, split="train", seed=0, kinds=("react:hops=2",))
        rendered = ins.render(TOK, e)
        start = len(TOK.encode(e.prompt)) + 2  # [BOS] prompt [SEP]: one byte, one token
        mask = rendered["loss_mask"][start:-1]  # the response's tokens ([EOS] last, trained)
        assert len(mask) == len(e.response.encode()) and rendered["loss_mask"][-1] == 1
        # The reference: the tool's text is what follows "Observation:" up to and including its newline.
        tool_text = np.zeros(len(e.response), bool)
        for m in re.finditer(r"Observation:([^\n]*\n)", e.response):
            tool_text[m.start(1) : m.end(1)] = True
        assert tool_text.sum() > 0 and e.response.count("Observation:") == 3
        np.testing.assert_array_equal(mask, ~tool_text)  # every other response token is trained
        assert not rendered["loss_mask"][:start].any()  # nor the prompt


def test_trajectories_follow_the_gold_plan_through_the_loop():
    world = make_world(8, seed=3)
    tools = agent_data.world_tools(world)
    qs = world.two_step(np.random.default_rng(0), 5) + world.questions(np.random.default_rng(1), 5)
    trajectories = [agent_data.gold_trajectory(q, tools) for q in qs]
    assert all(t.stopped == "finish" for t in trajectories)
    assert agent.trajectory_metrics(trajectories, [q.answer for q in qs])["success"] == 1.0
    assert set(agent.component_metrics(trajectories, [list(q.plan) for q in qs]).values()) == {1.0}
    # Each observation is the world's fact or the calculation (looked up independently here).
    q, t = qs[0], trajectories[0]
    table = world.table()
    assert [s.observation for s in t.steps[:2]] == [table[q.plan[0][1]], table[q.plan[1][1]]]
    assert t.steps[2].observation == q.answer


def test_direct_examples_use_the_fixed_world_and_agent_examples_fresh_ones():
    world = make_world(6, seed=5)
    facts = {f"Question: What is the {k}?{agent_data.DIRECT_SUFFIX}": v for k, v in world.table().items()}
    for i in range(10):
        e = ins.make_example(i, split="train", seed=0, kinds=("react:hops=1:direct=1:fresh=0:entities=6:world=5",))
        assert facts[e.prompt] == e.response and e.segments is None
    agent_examples = [ins.make_example(i, split="train", seed=0, kinds=("react:hops=1",)) for i in range(10)]
    assert all(e.prompt.startswith("Question: ") and "\n" not in e.prompt for e in agent_examples)
    values = {re.search(r"Observation: (.*)\n", e.response)[1] for e in agent_examples}
    assert len(values) > 5  # not one memorisable world
    e = agent_examples[0]
    assert ins.exact_match(e, e.response.replace("Observation: ", "Observation: 0"))  # only the finish counts
    assert not ins.exact_match(e, "Thought: x\nAction: finish[nothing]\n")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("react:direct=1", "direct=1 needs fresh=0"),
        ("react:hops=3", r"hops='3' must be an integer in \[1, 2\]"),
        ("react:steps=2", "react has no knob 'steps'"),
    ],
)
def test_bad_kinds_are_errors_naming_the_knob(kind, message):
    with pytest.raises(ValueError, match=message):
        ins.check_kinds([kind])


class _Config:
    max_len = 64


class _Model:
    config = _Config()


def test_chat_generator_feeds_the_chat_template_and_pads_rows(monkeypatch):
    import research.decode

    seen = {}

    class Out:
        def texts(self, tokenizer, stop_strings, skip_ids):
            return [f"Action: finish[{i}]\n" for i in range(len(seen["rows"]))]

    def fake_sample(model, params, rows, config):
        seen["rows"], seen["config"] = rows, config
        return Out()

    monkeypatch.setattr(research.decode, "sample", fake_sample)
    generate = agent.chat_generator(_Model(), None, TOK, max_new_tokens=16)
    texts = ["Question: a\n", "Question: b\nThought: t\n", "Question: c\n"]
    assert generate(texts) == ["Action: finish[0]\n", "Action: finish[1]\n", "Action: finish[2]\n"]
    want = [TOK.bos_id, *TOK.encode("Question: b"), TOK.sep_id, *TOK.encode("Thought: t\n")]
    assert seen["rows"][1] == [int(t) for t in want] and len(seen["rows"]) == 4  # padded to a power of two
    assert seen["config"].max_new_tokens == 16 and seen["config"].stop_tokens == (TOK.eos_id,)
    generate(["Question: " + "x" * 45 + "\n"])  # 2 + 55 tokens: 7 left in the context
    assert seen["config"].max_new_tokens == 7
    assert generate(["Question: " + "x" * 60 + "\n"]) == [""]  # no room: an empty (malformed) step


def test_experiment_question_sets_and_table():
    react, _ = load_experiment("experiments/react.py")
    sets = react.question_sets(entities=6, n=4, seed=0)
    assert list(sets) == list(react.SETS)
    seen, two_step = sets[react.SETS[0]]
    trained = {f"Question: What is the {k}?{agent_data.DIRECT_SUFFIX}" for k in seen.table()}
    trained = {p.removeprefix("Question: What is the ").removesuffix("?" + agent_data.DIRECT_SUFFIX)
               for p in trained if ins.split_of(p) == "train"}  # fmt: skip
    for q in two_step:
        assert ins.split_of(agent_data.direct_prompt(q)) == "eval"  # never trained as a direct question
        assert {q.plan[0][1], q.plan[1][1]} <= trained  # its facts were
    assert sets[react.SETS[2]][0].entities != seen.entities
    per_seed = [{name: {"direct": d, "trajectory": {k: d for k in react.TRAJECTORY},
                        "component": {k: 1 - d for k in react.COMPONENT}, "example": ""} for name in react.SETS}
                for d in (0.25, 0.75)]  # fmt: skip
    summary = react.summarize(per_seed)
    assert summary[react.SETS[1]]["direct"] == {"mean": 0.5, "std": 0.25}
    table = react._table(summary, 4)
    assert "| seen world, two-step | 0.500 ± 0.250 |" in table[4]
    with pytest.raises(ValueError, match="react scale='huge'"):
        react.get_config("scale=huge")
    config = react.get_config("scale=micro")
    assert config.sft.tasks.count("react:") == 4 and config.model.position == "rope"
    names = ByteTokenizer().with_added_tokens(config.data.added_tokens.split())
    for entity in seen.entities:  # every name is 2-3 syllable tokens and decodes back exactly
        assert 2 <= len(names.encode(entity.name)) <= 3 and names.decode(names.encode(entity.name)) == entity.name
