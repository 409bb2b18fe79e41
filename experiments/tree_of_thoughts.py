r"""Tree of thoughts vs chain of thought vs self-consistency on Countdown, at equal model calls.

  python -m research.sweep --config experiments/tree_of_thoughts.py --workdir workdirs/tree_of_thoughts

One SFT run on Countdown (research/data/reasoning.py `countdown`: reach the target
with + - * / over the numbers), every response a trace of steps "a op b=c".
analyze() then solves held-out problems three ways, each given C model calls
(one call = one sampled generation, research/reason/tree.py):
  CoT          one greedy trace (1 call), and C sampled traces of which any one that
               is valid counts (pass@C: a verifier picks the answer)
  self-consistency   C sampled traces and a vote: Countdown has many right answers, so the
               vote is over whole traces (the most frequent one, ties to the earliest),
               and it succeeds if the voted trace is valid
  ToT          breadth-first beam search over steps (breadth b, beam b, depth = numbers - 1):
               each sampled thought is one step (one call); a step that uses a number
               the pool lacks or gets the arithmetic wrong is pruned; a state is valued
               by the verifier (1 if the target is still reachable from its numbers, by
               exhaustive search, else 0: no model call)
A problem is solved when the steps are valid and produce the target (the same check
for all three). Writes results.md, results.json and tree_of_thoughts.png.

Equal calls are not equal tokens: a ToT call writes one step, a CoT call a whole trace.
Sizes: a first tiny run on 4 numbers (800 SFT steps) solved 0.04 of the problems with
greedy CoT and 0.08-0.10 with ToT, most sampled steps invalid: the floor. The tiny
scale uses 3 numbers (two steps) instead.
Arguments: scale=tiny|full, seed=N.
"""

import json

import jax
import numpy as np

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, numbers, sft steps, batch, eval problems, call budgets
    "tiny": (2, 128, 4, 3, 800, 32, 100, (4, 8, 16)),
    "full": (12, 768, 12, 5, 10_000, 128, 500, (8, 16, 32, 64)),
}


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"tree_of_thoughts scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kind(arg) -> str:
    return f"countdown:count={SCALES[arg.scale][3]}:max=10:think=1"


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, count, steps, batch, *_ = SCALES[arg.scale]
    return sft_config(kind(arg), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=24 * count, seed=arg.seed)  # fmt: skip


class CountdownThoughts:
    """The ToT callables for one problem: a state is (numbers left, steps so far)."""

    def __init__(self, reasoner, prompt: str, *, seed: int, step_tokens: int = 12):
        from research.data import reasoning

        self.r, self.prompt, self.seed, self.step_tokens = reasoner, prompt, seed, step_tokens
        numbers, self.target = reasoning.parse_countdown(prompt)
        self.root = (tuple(sorted(numbers)), ())
        self.space = tuple(int(t) for t in reasoner.tok.encode(" "))

    def propose(self, states, k):
        from research.decode import SamplingConfig, sample

        tok, r = self.r.tok, self.r
        head = r.prompt_tokens([self.prompt])[0] + [r.think_open]
        prompts = [head + tok.encode(" ".join(steps) + (" " if steps else "")).tolist() for _, steps in states]
        config = SamplingConfig(max_new_tokens=self.step_tokens, temperature=1.0, num_samples=k,
                                stop_tokens=(tok.eos_id, r.think_close), stop_sequences=(self.space,),
                                pad_id=tok.pad_id)  # fmt: skip
        self.seed += 1
        out = sample(r.model, r.params, prompts, config, jax.random.key(self.seed))
        texts = [tok.decode([t for t in row if t not in (tok.eos_id, r.think_close)]).strip()
                 for row in out.responses()]  # fmt: skip
        return [texts[i * k : (i + 1) * k] for i in range(len(states))]

    def step(self, state, thought):
        from research.data import reasoning

        pool = reasoning.countdown_step(state[0], thought)
        return None if pool is None else (pool, (*state[1], thought))

    def value(self, states):
        from research.data import reasoning

        return [float(reasoning.solve_countdown(pool, self.target) is not None) for pool, _ in states]

    def is_solution(self, state):
        return self.target in state[0] and bool(state[1])


def get_stages(arg=None):
    return [Stage("sft", get_config(arg))]


def analyze(workdir, runs, arg=None):
    from research.data import instructions, reasoning
    from research.reason.consistency import majority_vote
    from research.reason.reasoner import Reasoner
    from research.reason.tree import ToTConfig, tree_search
    from research.train.runs import load_run

    arg = _arg(arg)
    count, _, _, n, budgets = SCALES[arg.scale][3:]
    run = runs[0]
    reasoner = Reasoner(load_run(run.workdir))
    examples = [instructions.make_example(i, split="eval", seed=0, kinds=(kind(arg),)) for i in range(n)]
    prompts = [e.prompt for e in examples]
    tokens = run.config.sft.max_new_tokens

    def solved(prompt, text):
        return reasoning.countdown_trace_reaches(prompt, reasoning.parse(text).thought)

    greedy = reasoner.answer(prompts, mode="think", max_new_tokens=tokens)
    greedy_hits = [solved(p, t[0]) for p, t in zip(prompts, greedy.texts, strict=True)]
    rows = {"CoT, greedy (1 call)": {1: float(np.mean(greedy_hits))}}
    sampled = reasoner.answer(prompts, mode="think", max_new_tokens=tokens, num_samples=max(budgets),
                              temperature=1.0, seed=arg.seed)  # fmt: skip
    rows["CoT + verifier (pass@C)"], rows["self-consistency (majority trace)"], rows["ToT"] = {}, {}, {}
    for c in budgets:
        hits, votes = [], []
        for p, texts in zip(prompts, sampled.texts, strict=True):
            traces = [reasoning.parse(t).thought for t in texts[:c]]
            hits.append(any(solved(p, t) for t in texts[:c]))
            voted = majority_vote([t.strip() if t else None for t in traces])
            votes.append(reasoning.countdown_trace_reaches(p, voted))
        rows["CoT + verifier (pass@C)"][c] = float(np.mean(hits))
        rows["self-consistency (majority trace)"][c] = float(np.mean(votes))
        breadth = max(2, int(round(c**0.5)))
        tot, spent = [], []
        for i, p in enumerate(prompts):
            problem = CountdownThoughts(reasoner, p, seed=1000 * i + c)
            result = tree_search(problem.root, problem.propose, problem.step, problem.value, problem.is_solution,
                                 ToTConfig(breadth=breadth, beam=breadth, depth=count - 1, max_calls=c))  # fmt: skip
            tot.append(result.solution is not None)
            spent.append(result.calls)
        rows["ToT"][c] = float(np.mean(tot))
        rows.setdefault("ToT calls spent (mean)", {})[c] = float(np.mean(spent))
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| method | " + " | ".join(f"C = {c}" for c in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for method, values in rows.items():
        if method.startswith("CoT, greedy"):
            continue  # one call: the line below the table
        lines.append(f"| {method} | " + " | ".join(f"{values[c]:.3f}" if c in values else "" for c in budgets) + " |")
    lines.append(f"\nGreedy CoT (1 call): {rows['CoT, greedy (1 call)'][1]:.3f} of {n} held-out problems solved.")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "tree_of_thoughts.png")


METHODS = ("CoT + verifier (pass@C)", "self-consistency (majority trace)", "ToT")  # the curves, one colour each


def plot_seeds(workdir, merged, arg=None):
    """tree_of_thoughts.png again from the seeds' merged results: means with ± std error bars over seeds."""
    del arg
    _plot(merged, workdir / "tree_of_thoughts.png")


def _plot(rows: dict, path) -> None:
    """Problems solved vs model calls per method, greedy CoT as a line; one seed's rows ({method: {C: rate}},
    C an int or, read back from results.json, a string) or the seeds' merged ones (± std error bars and band)."""
    from matplotlib.figure import Figure

    from research.stats import mean_err

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for i, method in enumerate(METHODS):
        points = sorted((int(c), *mean_err(v)) for c, v in rows[method].items())
        calls, mean, err = zip(*points, strict=True)
        ax.errorbar(calls, mean, yerr=err, fmt="o-", capsize=3, color=f"C{i}", label=method)
    greedy, greedy_err = mean_err(next(iter(rows["CoT, greedy (1 call)"].values())))
    ax.axhline(greedy, color="k", lw=0.8, label="CoT, greedy (1 call)")
    ax.axhspan(greedy - greedy_err, greedy + greedy_err, color="k", alpha=0.1, lw=0)
    ax.set(xscale="log", xlabel="model calls C per problem", ylabel="problems solved (fraction of held-out)",
           title="Countdown (bars: ± std over seeds)")  # fmt: skip
    ax.set_xticks(calls, [str(c) for c in calls], minor=False)  # the budgets, not powers of 10
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
