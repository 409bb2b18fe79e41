"""ReAct agents (research.apps.agent): the loop on scripted models, tools, and hand-checked metrics."""

import flax.linen as nn
import jax
import pytest

from research.apps.agent import (
    Tools,
    calculator,
    component_metrics,
    lookup_tool,
    model_generator,
    run_agent,
    run_agents,
    search_tool,
    training_segments,
    trajectory_metrics,
)
from research.apps.retrieval import BM25
from research.models import DecoderLM, ModelConfig, init_params
from research.tokenizers import ByteTokenizer

TOOLS = Tools({"calculator": calculator, "lookup": lookup_tool({"price of item7": "14"})})


def scripted(*continuations):
    """A 'model' that writes the given continuations in turn and records the text it was shown."""
    seen, it = [], iter(continuations)

    def generate(text):
        seen.append(text)
        return next(it)

    generate.seen = seen
    return generate


def test_the_loop_runs_tools_and_writes_observations_itself():
    model = scripted(
        "Thought: I need the price.\nAction: lookup[price of item7]\nObservation: 99 (the model's own guess)",
        "Thought: times 3.\nAction: calculator[14 * 3]\n",
        "Action: finish[42]\n",
    )
    traj = run_agent(model, TOOLS, "price of item7 times 3?", max_steps=5)
    assert traj.stopped == "finish" and traj.answer == "42" and len(traj.steps) == 3
    assert [s.observation for s in traj.steps] == ["14", "42", None]
    assert model.seen[1].endswith("Action: lookup[price of item7]\nObservation: 14\n")  # not the model's "99"
    plan = [("lookup", "price of item7"), ("calculator", "14*3"), ("finish", "42")]
    assert component_metrics([traj], [plan]) == {
        "well_formed": 1.0, "known_tool": 1.0, "right_tool": 1.0, "right_args": 1.0, "answer_extracted": 1.0,
    }  # fmt: skip
    assert trajectory_metrics([traj], ["42"]) == {
        "success": 1.0, "steps": 3.0, "wasted_calls": 0.0, "loops": 0.0, "step_limit": 0.0,
    }  # fmt: skip
    segments = training_segments(traj.text)
    assert "".join(t for t, _ in segments) == traj.text
    assert [t for t, trained in segments if not trained] == ["Question: price of item7 times 3?\n", " 14\n", " 42\n"]
    assert segments[1] == ("Thought: I need the price.\nAction: lookup[price of item7]\nObservation:", True)


def test_the_agent_stops_at_its_step_limit_and_loops_are_counted():
    model = scripted(*["Thought: again\nAction: calculator[1 + 1]\n"] * 4)
    traj = run_agent(model, TOOLS, "q", max_steps=4)
    assert traj.stopped == "step_limit" and traj.answer is None and len(traj.steps) == 4
    assert trajectory_metrics([traj], ["2"]) == {
        "success": 0.0, "steps": 4.0, "wasted_calls": 3.0, "loops": 1.0, "step_limit": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="max_steps=0"):
        run_agent(model, TOOLS, "q", max_steps=0)


def test_bad_calls_become_observations_never_exceptions():
    model = scripted(
        "Action: browse[http://example.com]\n",  # a tool the registry lacks
        "Action: calculator[__import__('os').system('true')]\n",  # malformed arguments: refused, not run
        "Action: calculator[9 ** 9 ** 9]\n",  # would allocate gigabytes: refused from the operand sizes
        "Action: lookup[price of item8]\n",
        "I think the answer is 5.",  # no action at all
    )
    traj = run_agent(model, TOOLS, "q", max_steps=6)
    assert traj.stopped == "malformed" and traj.answer is None
    assert traj.steps[0].observation.startswith("error: unknown tool 'browse'; tools: calculator, lookup")
    assert "not allowed: Call" in traj.steps[1].observation and "exceeds the limit" in traj.steps[2].observation
    assert traj.steps[3].observation == "error: no entry for 'price of item8'"
    m = component_metrics([traj], [[("lookup", "price of item7")]])
    assert m["well_formed"] == pytest.approx(4 / 5) and m["known_tool"] == pytest.approx(3 / 5)
    assert m["right_tool"] == 0.0 and m["answer_extracted"] == 0.0
    assert trajectory_metrics([traj], ["5"])["wasted_calls"] == 4.0
    with pytest.raises(ValueError, match="tool names"):
        Tools({"finish": calculator})


def test_search_tool_over_a_retriever():
    passages = ["Veltrano was founded by Ada Quill.", "Item7 costs 14 coins.", "The sky is green on Zorb."]
    search = search_tool(BM25(passages), passages)
    assert search("who founded Veltrano") == passages[0]
    assert Tools({"search": search}).call("search", "  ") == ("error: empty search query", False)


def test_a_decoder_runs_the_loop_to_a_defined_outcome():
    tokenizer = ByteTokenizer()
    model = DecoderLM(ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, d_model=32, num_heads=2,
                                  num_kv_heads=2, mlp_dim=64, max_len=256))  # fmt: skip
    params = nn.unbox(init_params(model, jax.random.key(0)))
    traj = run_agent(model_generator(model, params, tokenizer, max_new_tokens=8), TOOLS, "1+1?", max_steps=1)
    assert traj.stopped in ("finish", "step_limit", "malformed") and len(traj.steps) == 1


def test_expressions_that_would_hang_or_escape_are_refused_as_wasted_calls():
    model = scripted(
        "Action: calculator[" + "-(" * 40 + "1" + ")" * 40 + "]\n",  # deep nesting: refused before recursing
        "Action: calculator[" + "+".join(["1"] * 5000) + "]\n",  # too long to parse
        "Action: calculator[(2 ** 64) ** (2 ** 64)]\n",  # a power whose size is known to be huge
        "Action: calculator[().__class__]\n",  # attribute access
        "Action: calculator[1 / 0]\n",
        "Action: lookup[]\n",  # malformed argument for the lookup
        "Action: calculator[1 + 1\n",  # unbalanced bracket: no action parses
    )
    traj = run_agent(model, TOOLS, "q", max_steps=8)
    assert traj.stopped == "malformed" and len(traj.steps) == 7
    assert all(s.observation.startswith("error: ") and not s.ok for s in traj.steps[:6])
    assert "deeper" in traj.steps[0].observation and "characters long" in traj.steps[1].observation
    assert trajectory_metrics([traj], ["2"])["wasted_calls"] == 6.0


def test_run_agents_batches_rounds_and_matches_one_at_a_time():
    scripts = {
        "a": ["Action: lookup[price of item7]\n", "Action: finish[14]\n"],
        "b": ["Action: finish[0]\n"],
        "c": ["Action: calculator[2 * 3]\n", "Action: calculator[2 * 3]\n", "Action: calculator[6]\n"],
    }
    rounds = []

    def generate_batch(texts):
        rounds.append(len(texts))
        return [scripts[t.split("\n")[0].removeprefix("Question: ")][t.count("Action:")] for t in texts]

    batched = run_agents(generate_batch, TOOLS, ["a", "b", "c"], max_steps=3)
    assert rounds == [3, 2, 1]  # finished trajectories leave the batch
    for q, traj in zip("abc", batched, strict=True):
        alone = run_agent(scripted(*scripts[q]), TOOLS, q, max_steps=3)
        assert traj == alone
    assert [t.stopped for t in batched] == ["finish", "finish", "step_limit"]
    with pytest.raises(ValueError, match="returned 1 continuations for 3 texts"):
        run_agents(lambda texts: ["Action: finish[1]\n"], TOOLS, ["a", "b", "c"])
