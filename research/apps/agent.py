"""ReAct agents: thought -> action -> observation in a loop, a small tool registry, and their metrics.

A trajectory is plain text the model writes and the loop completes:

    Question: what is the price of item7 times 3?
    Thought: I need the price of item7.
    Action: lookup[price of item7]
    Observation: 14
    Thought: 14 * 3 is the answer.
    Action: calculator[14 * 3]
    Observation: 42
    Action: finish[42]

The model writes Thought/Action lines and the "Observation:" cue; the loop stops
it there, runs the tool and writes the observation itself, so tool output is
never the model's and `training_segments` keeps it out of an SFT loss. `run_agent` takes
any `generate(text) -> continuation` (`model_generator` makes one from a
decoder), so the loop, the tools and the metrics are the same for every model.

Evaluation (Yao et al. 2023, ReAct; the reference sheet's "component" and
"trajectory" views): per step, whether the action parsed, named a registered
tool, and matched the gold plan's tool and argument; per trajectory, success,
steps, wasted calls (tool errors and repeats) and loops (the same call again).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from research.data import arithmetic

FINISH = "finish"
_ACTION = re.compile(r"^Action:\s*([A-Za-z_][\w-]*)\[(.*)\]\s*$", re.MULTILINE)
_THOUGHT = re.compile(r"^Thought:\s*(.*)$", re.MULTILINE)


class ToolError(ValueError):
    """A tool refused its argument; the agent sees the message as its observation."""


def calculator(arg: str) -> str:
    """The safe calculator (research.data.arithmetic): never `eval`, bounded work."""
    try:
        return arithmetic.format_value(arithmetic.evaluate(arg))
    except arithmetic.CalculatorError as e:
        raise ToolError(str(e)) from None


def lookup_tool(table: dict[str, str]) -> Callable[[str], str]:
    """A tool answering a key with its value (keys compared without case and outer spaces)."""
    normal = {k.strip().lower(): v for k, v in table.items()}

    def lookup(arg: str) -> str:
        key = arg.strip().lower()
        if key not in normal:
            raise ToolError(f"no entry for {arg.strip()!r}")
        return normal[key]

    return lookup


def search_tool(retriever, passages: list[str], *, k: int = 1) -> Callable[[str], str]:
    """A tool returning the top-k passages a research.apps.retrieval retriever finds for the query."""

    def search(arg: str) -> str:
        if not arg.strip():
            raise ToolError("empty search query")
        _, ids = retriever.search([arg], k)
        return " | ".join(passages[int(i)] for i in ids[0] if i >= 0)

    return search


class Tools:
    """name -> callable(str) -> str. `call` never raises for a bad call: it returns (observation, ok)."""

    def __init__(self, tools: dict[str, Callable[[str], str]]):
        bad = [n for n in tools if not re.fullmatch(r"[A-Za-z_][\w-]*", n) or n == FINISH]
        if bad:
            raise ValueError(f"tool names must be identifiers other than {FINISH!r}, got {bad}")
        self.tools = dict(tools)

    def call(self, name: str, arg: str) -> tuple[str, bool]:
        if name not in self.tools:
            return f"error: unknown tool {name!r}; tools: {', '.join(sorted(self.tools))}", False
        try:
            return self.tools[name](arg), True
        except ToolError as e:
            return f"error: {e}", False


@dataclasses.dataclass
class Step:
    thought: str | None
    tool: str | None  # None: no parseable action
    arg: str | None
    observation: str | None = None
    ok: bool = False  # the tool ran (or the action was finish)


@dataclasses.dataclass
class Trajectory:
    question: str
    steps: list[Step]
    answer: str | None  # the finish[...] argument, None if the agent never finished
    stopped: str  # "finish" | "step_limit" | "malformed"
    text: str  # the whole trajectory as the model saw it


def parse_step(text: str) -> Step:
    """The first Thought and Action of the model's continuation (tool None when no action parses)."""
    action = _ACTION.search(text)
    thought = _THOUGHT.search(text[: action.start()] if action else text)
    thought = thought[1].strip() if thought else None
    if action is None:
        return Step(thought, None, None)
    return Step(thought, action[1], action[2].strip())


def run_agent(generate: Callable[[str], str], tools: Tools, question: str, *, max_steps: int = 6) -> Trajectory:
    """The ReAct loop: at most `max_steps` model calls; see the module docstring."""
    return run_agents(lambda texts: [generate(t) for t in texts], tools, [question], max_steps=max_steps)[0]


def run_agents(
    generate_batch: Callable[[list[str]], list[str]], tools: Tools, questions: list[str], *, max_steps: int = 6
) -> list[Trajectory]:
    """`run_agent` over many questions at once: each round is one `generate_batch` call on the
    trajectories still running (a decoder samples them as one batch), in the order of `questions`."""
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    texts = [f"Question: {q}\n" for q in questions]
    steps: list[list[Step]] = [[] for _ in questions]
    done: list[Trajectory | None] = [None] * len(questions)
    for _ in range(max_steps):
        live = [i for i, d in enumerate(done) if d is None]
        if not live:
            break
        continuations = generate_batch([texts[i] for i in live])
        if len(continuations) != len(live):
            raise ValueError(f"generate_batch returned {len(continuations)} continuations for {len(live)} texts")
        for i, continuation in zip(live, continuations, strict=True):
            step = parse_step(continuation)
            steps[i].append(step)
            if step.tool is None:
                done[i] = Trajectory(questions[i], steps[i], None, "malformed", texts[i] + continuation)
                continue
            texts[i] += (f"Thought: {step.thought}\n" if step.thought else "") + f"Action: {step.tool}[{step.arg}]\n"
            if step.tool == FINISH:
                step.ok = True
                done[i] = Trajectory(questions[i], steps[i], step.arg, FINISH, texts[i])
                continue
            step.observation, step.ok = tools.call(step.tool, step.arg)
            texts[i] += f"Observation: {step.observation}\n"
    return [
        d or Trajectory(q, s, None, "step_limit", t) for d, q, s, t in zip(done, questions, steps, texts, strict=True)
    ]


def training_segments(trajectory_text: str) -> list[tuple[str, bool]]:
    """(piece, trained) in order. The question line is the prompt and an observation's text (after
    "Observation:") is the tool's, so neither is trained on; the "Observation:" cue itself is trained,
    since writing it is how the model hands over to the tool (the loop stops generation there).
    Concatenating the pieces gives the text back."""
    out: list[tuple[str, bool]] = []

    def add(piece: str, trained: bool) -> None:
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + piece, trained)
        elif piece:
            out.append((piece, trained))

    for line in trajectory_text.splitlines(keepends=True):
        if line.startswith("Observation:"):
            add("Observation:", True)
            add(line[len("Observation:") :], False)
        else:
            add(line, not line.startswith("Question:"))
    return out


def model_generator(model, params, tokenizer, *, max_new_tokens: int = 48) -> Callable[[str], str]:
    """generate(text) -> greedy continuation of a decoder, stopped at "Observation:" (research.decode)."""
    from research.decode import SamplingConfig, sample

    stop = tuple(int(t) for t in tokenizer.encode("Observation:"))
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_sequences=(stop,))

    def generate(text: str) -> str:
        out = sample(model, params, [[int(t) for t in tokenizer.encode(text)]], config)
        return out.texts(tokenizer, stop_strings=("Observation:",))[0]

    return generate


def chat_generator(model, params, tokenizer, *, max_new_tokens: int = 128) -> Callable[[list[str]], list[str]]:
    """generate_batch(texts) for a decoder SFT-trained on the chat template of research.data.instructions: a
    trajectory's first line (the question) is the prompt, fed as [BOS] prompt [SEP], and the rest is the
    response so far. Greedy, stopped at "Observation:" or [EOS], at most `max_new_tokens` or what the
    context has left (none left: an empty continuation, which the loop counts as malformed). The rows
    are padded to a power of two, so a run compiles once per (rows, prompt bucket) however many
    trajectories are still running."""
    from research.data.instructions import prompt_tokens
    from research.decode import SamplingConfig, sample

    stop = tuple(int(t) for t in tokenizer.encode("Observation:"))
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(tokenizer.eos_id,),
                            stop_sequences=(stop,))  # fmt: skip

    def generate_batch(texts: list[str]) -> list[str]:
        rows = []
        for text in texts:
            prompt, _, response = text.partition("\n")
            rows.append(prompt_tokens(tokenizer, prompt).tolist() + [int(t) for t in tokenizer.encode(response)])
        room = model.config.max_len - max(len(r) for r in rows)
        if room < 1:  # a trajectory that fills the context gets an empty step: "malformed", not an error
            return [""] * len(rows)
        padded = rows + [rows[0]] * ((1 << max(len(rows) - 1, 0).bit_length()) - len(rows))
        step_config = config if room >= max_new_tokens else dataclasses.replace(config, max_new_tokens=room)
        out = sample(model, params, padded, step_config)
        texts_out = out.texts(tokenizer, stop_strings=("Observation:",), skip_ids=(tokenizer.eos_id,))
        return texts_out[: len(rows)]

    return generate_batch


# --- metrics ---------------------------------------------------------------------------------------------


def component_metrics(trajectories: list[Trajectory], gold_plans: list[list[tuple[str, str]]]) -> dict:
    """Per-step rates over all steps: well_formed (an action parsed), known_tool, right_tool and
    right_args (against the gold plan's step at the same index; arguments compared without spaces
    and case), and answer_extracted (per trajectory: it ended with finish[...])."""
    steps = well = known = tool = args = 0
    for traj, plan in zip(trajectories, gold_plans, strict=True):
        for i, s in enumerate(traj.steps):
            steps += 1
            well += s.tool is not None
            known += s.tool is not None and (s.tool == FINISH or s.ok or not s.observation.startswith("error: unknown"))
            if i < len(plan) and s.tool is not None:
                tool += s.tool == plan[i][0]
                args += s.tool == plan[i][0] and _norm(s.arg) == _norm(plan[i][1])
    n = max(steps, 1)
    return {
        "well_formed": well / n,
        "known_tool": known / n,
        "right_tool": tool / n,
        "right_args": args / n,
        "answer_extracted": sum(t.answer is not None for t in trajectories) / max(len(trajectories), 1),
    }


def _norm(s: str | None) -> str:
    return re.sub(r"\s+", "", s or "").lower()


def trajectory_metrics(trajectories: list[Trajectory], gold_answers: list[str]) -> dict:
    """Means over trajectories: success (answer == gold, spaces and case aside), steps (model calls),
    wasted_calls (tool calls that errored or repeated an earlier call), loops (trajectories that
    repeated a call), step_limit (trajectories stopped by the limit)."""
    success = steps = wasted = loops = limit = 0
    for traj, gold in zip(trajectories, gold_answers, strict=True):
        success += traj.answer is not None and _norm(traj.answer) == _norm(gold)
        steps += len(traj.steps)
        seen, repeated = set(), False
        for s in traj.steps:
            if s.tool is None or s.tool == FINISH:
                continue
            call = (s.tool, _norm(s.arg))
            repeat = call in seen
            repeated |= repeat
            wasted += repeat or not s.ok
            seen.add(call)
        loops += repeated
        limit += traj.stopped == "step_limit"
    n = max(len(trajectories), 1)
    return {"success": success / n, "steps": steps / n, "wasted_calls": wasted / n, "loops": loops / n,
            "step_limit": limit / n}  # fmt: skip
