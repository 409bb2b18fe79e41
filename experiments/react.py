r"""ReAct agent with tools vs the same model answering directly, on questions that need lookups and a calculation.

  python -m research.sweep --config experiments/react.py --workdir workdirs/react

One SFT run (research/reason/recipes.py's byte-level decoder) on four "react" kinds
(research/apps/agent_data.py), mixed evenly, so ONE model knows both formats and the prompt picks
one: "Question: <q>" asks for a ReAct trajectory (Thought / Action: tool[arg] / Observation),
"Question: <q>\nAnswer directly." for the answer alone.
  agent, two-step and single-hop    each from a freshly drawn world (research/data/entities.py),
                                    so the values can only come from the observations; the tools'
                                    output has loss_mask 0 (agent.training_segments)
  direct, two-step and single-hop   on ONE fixed world (24 entities x 5 attributes), so the direct
                                    arm can memorise its facts; two-step answers need the sum or
                                    difference of two memorised numbers, done "in the head"
analyze() runs the agent loop (research/apps/agent.py: calculator, lookup over World.table(),
BM25 search over World.passages(), at most MAX_STEPS model calls, all questions of a set batched
per round) and direct greedy answers on three question sets:
  seen world, two-step    held-out questions (their direct prompt never trained) on the fixed
                          world, whose two facts were trained as single-hop direct questions
  seen world, single-hop  trained single-hop facts: the direct arm's memorisation, the easy row
  unseen world, two-step  a world neither arm saw: direct answering is at chance by construction
                          (names and numbers are drawn at random), the agent only plans and copies
It reports the direct arm's exact match, the agent's trajectory metrics (success, steps, wasted
calls, loops, step-limit stops) and component metrics (well-formed actions, known tool, right
tool, right arguments against the gold plan, answer extracted), mean and spread over EVAL_SEEDS
draws of each question set (one training seed: the evaluation's spread only). Writes results.md,
results.json and react.png.

Sizes: the seen world is where direct answering can be non-zero (facts memorised in training) but
is not free (two facts plus 3-digit addition without a trace); the unseen world is the floor
every closed-book answer sits at. Arguments: scale=micro|tiny|full, seed=N (micro: the test's
toy size, meaningless numbers).

What the tiny scale gave (2 x 128, seq_len 384, 24-entity world, 32 questions x 3 draws; 2 shared
cores, the run using 0.5-0.8 of them, 8-14 min wall each):
  1. learned positions, byte-level names, 600 steps x 8 rows, lr 2e-3: the format is learned
     (0.59 of steps well-formed, 0.42 right tool) but no argument is right (0.00): the model
     writes a name of the right shape, never the question's. Agent success 0, direct 0 / 0.04.
  2. RoPE, 700 steps: loss 0.23 -> 0.16, well-formed 0.76, right tool 0.51, right args 0.00,
     direct single-hop 0.26 (memorised facts), every two-step row 0 for both arms.
  3. + name syllables as added tokens (a name is 2-3 tokens): the same (right args <= 0.01).
     Teacher-forced, the model predicts every format token and no copied one: not the first
     syllable of the name, not the next syllable after it, not an observation's digits. The
     copying (induction) circuit has not formed in ~2M tokens.
  4. (this file) + lr 3e-3, 900 steps x 6 rows: the same picture; see results.md.
So at this budget both arms sit at the floor on two-step questions and the comparison the
experiment is built for does not resolve: the tiny scale measures the format (well-formedness,
tool choice) and the direct arm's memorisation, not the value of tools. The full scale (8 x 512,
8000 steps x 64 rows) is sized for copying to be learned; it has not been run.
"""

import json

import numpy as np

from research.apps.agent_data import NAME_TOKENS
from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, sft steps, batch, seq_len, entities, eval questions per set
    "micro": (1, 32, 2, 4, 4, 384, 6, 4),
    "tiny": (2, 128, 4, 900, 6, 384, 24, 32),
    "full": (8, 512, 8, 8000, 64, 512, 200, 300),
}
MAX_STEPS = 6
MAX_LEN = 512  # the context: a two-step trajectory is at most ~350 bytes, training rows SCALES' seq_len
EVAL_SEEDS = (0, 1, 2)
UNSEEN_WORLD = 10**6 - 1  # the seed of the world no training example came from
SETS = ("seen world, two-step", "seen world, single-hop", "unseen world, two-step")


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"react scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kinds(arg) -> tuple[str, ...]:
    entities = SCALES[arg.scale][6]
    return (f"react:hops=2:entities={entities}", f"react:hops=1:entities={entities}",
            f"react:hops=2:direct=1:fresh=0:entities={entities}",
            f"react:hops=1:direct=1:fresh=0:entities={entities}")  # fmt: skip


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, steps, batch, seq_len, *_ = SCALES[arg.scale]
    c = sft_config(",".join(kinds(arg)), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=96, seed=arg.seed, seq_len=seq_len, eval_examples=8)  # fmt: skip
    c.model.max_len = MAX_LEN  # generation runs past the longest training trajectory only when it goes astray
    # RoPE, not the recipe's learned positions: an action copies a name from the question and a number from
    # an observation, and with learned positions 600 steps had not learned to copy (see the docstring).
    c.model.position = "rope"
    c.data.added_tokens = " ".join((c.data.added_tokens, *NAME_TOKENS))  # names as syllable tokens (agent_data)
    c.optim.learning_rate = 3e-3  # the recipe's 2e-3 had not left copying's plateau by step 700 (docstring)
    return c


def get_stages(arg=None):
    return [Stage("sft", get_config(arg))]


def question_sets(entities: int, n: int, seed: int) -> dict:
    """{set name: (world, questions)} as the module docstring describes; seed picks the draw."""
    from research.apps.agent_data import direct_prompt, questions
    from research.data.entities import make_world
    from research.data.instructions import split_of

    seen, unseen = make_world(entities, seed=0), make_world(entities, seed=UNSEEN_WORLD)
    rng = np.random.default_rng([seed, 7])
    trained_facts = {q.plan[0][1] for q in seen.questions(rng, 50 * entities) if split_of(direct_prompt(q)) == "train"}

    def held_out_two_step(q):
        return split_of(direct_prompt(q)) == "eval" and {q.plan[0][1], q.plan[1][1]} <= trained_facts

    def draw(world, hops, keep):
        out, texts = [], set()
        for q in questions(world, rng, 400 * n, hops):
            if keep(q) and q.text not in texts:
                out.append(q)
                texts.add(q.text)
            if len(out) == n:
                return out
        raise RuntimeError(f"only {len(out)} of {n} questions pass the filter")  # a world too small for n

    return {
        SETS[0]: (seen, draw(seen, 2, held_out_two_step)),
        SETS[1]: (seen, draw(seen, 1, lambda q: q.plan[0][1] in trained_facts)),
        SETS[2]: (unseen, draw(unseen, 2, lambda q: True)),
    }


def direct_answers(model, params, tokenizer, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    from research.data.instructions import prompt_tokens
    from research.decode import SamplingConfig, sample

    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(tokenizer.eos_id,))
    out = sample(model, params, [prompt_tokens(tokenizer, p).tolist() for p in prompts], config)
    return [t.strip() for t in out.texts(tokenizer, skip_ids=(tokenizer.eos_id,))]


def evaluate(model, params, tokenizer, entities: int, n: int, seed: int) -> dict:
    """{set: {"direct": accuracy, "trajectory": ..., "component": ...}} for one draw of the question sets."""
    from research.apps import agent
    from research.apps.agent_data import direct_prompt, world_tools

    generate = agent.chat_generator(model, params, tokenizer, max_new_tokens=96)
    out = {}
    for name, (world, qs) in question_sets(entities, n, seed).items():
        direct = direct_answers(model, params, tokenizer, [direct_prompt(q) for q in qs])
        trajectories = agent.run_agents(generate, world_tools(world), [q.text for q in qs], max_steps=MAX_STEPS)
        out[name] = {
            "direct": float(np.mean([d == q.answer for d, q in zip(direct, qs, strict=True)])),
            "trajectory": agent.trajectory_metrics(trajectories, [q.answer for q in qs]),
            "component": agent.component_metrics(trajectories, [list(q.plan) for q in qs]),
            "example": trajectories[0].text,
        }
    return out


def summarize(per_seed: list[dict]) -> dict:
    """Mean and std over evaluation seeds of every number in `evaluate`'s output."""
    out = {}
    for name in per_seed[0]:
        rows = {"direct": [r[name]["direct"] for r in per_seed]}
        for group in ("trajectory", "component"):
            for key in per_seed[0][name][group]:
                rows[key] = [r[name][group][key] for r in per_seed]
        out[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in rows.items()}
    return out


def analyze(workdir, runs, arg=None):
    from research.train.runs import load_run

    arg = _arg(arg)
    entities, n = SCALES[arg.scale][6:8]
    run = load_run(runs[0].workdir)
    model, params = run.for_decoding()
    per_seed = [evaluate(model, params, run.tokenizer, entities, n, seed) for seed in EVAL_SEEDS]
    summary = summarize(per_seed)
    results = {"summary": summary, "per_seed": per_seed, "questions_per_set": n, "max_steps": MAX_STEPS}
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    lines = _table(summary, n)
    lines += ["", "An agent trajectory (seen world, two-step, first question of eval seed 0):", "", "```",
              per_seed[0][SETS[0]]["example"].rstrip(), "```"]  # fmt: skip
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(summary, workdir / "react.png")


TRAJECTORY = ("success", "steps", "wasted_calls", "loops", "step_limit")
COMPONENT = ("well_formed", "known_tool", "right_tool", "right_args", "answer_extracted")


def _table(summary: dict, n: int) -> list[str]:
    def cell(s, key):
        return f"{s[key]['mean']:.3f} ± {s[key]['std']:.3f}"

    lines = [f"{n} questions per set, mean ± std over {len(EVAL_SEEDS)} draws of the questions; agent at most "
             f"{MAX_STEPS} model calls.", "", "| question set | direct exact match | agent success | steps | "
             "wasted calls | loops | step limit |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(s, k) for k in ("direct", *TRAJECTORY)) + " |")
    lines += ["", "Agent components (per step; answer extracted per trajectory):", "",
              "| question set | " + " | ".join(COMPONENT) + " |", "|---|" + "---:|" * len(COMPONENT)]  # fmt: skip
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(s, k) for k in COMPONENT) + " |")
    return lines


def plot_seeds(workdir, merged, arg=None):
    """react.png again from the seeds' merged results: means over training seeds, error bars ± std over seeds."""
    del arg
    _plot(merged["summary"], workdir / "react.png", over_seeds=True)


def _mean_err(cell: dict, over_seeds: bool) -> tuple[float, float]:
    """(mean, error bar) of a {"mean", "std" over eval draws} cell: for one seed the std over the draws; for the
    seeds' merged cell (each of its numbers merged over seeds) the std over seeds of the per-seed means."""
    from research.stats import mean_err

    return mean_err(cell["mean"]) if over_seeds else (float(cell["mean"]), float(cell["std"]))


ARM_COLORS = {"direct": "C0", "success": "C1"}  # direct answer, ReAct agent
SET_COLORS = {name: f"C{i + 2}" for i, name in enumerate(SETS)}  # not the arms' colours: another variable


def _plot(summary: dict, path, over_seeds: bool = False) -> None:
    """Direct vs agent per question set, and the agent's component rates; one seed's summary (bars: std over
    eval draws) or the seeds' merged one (over_seeds: bars ± std over seeds)."""
    from matplotlib.figure import Figure

    spread = "± std over seeds" if over_seeds else f"± std over {len(EVAL_SEEDS)} eval draws"
    fig = Figure(figsize=(11, 3.8))
    acc, comp = fig.subplots(1, 2)
    x = np.arange(len(summary))
    for offset, key, label in ((-0.2, "direct", "direct answer"), (0.2, "success", "ReAct agent")):
        mean, err = zip(*(_mean_err(s[key], over_seeds) for s in summary.values()), strict=True)
        acc.bar(x + offset, mean, 0.4, yerr=err, capsize=3, color=ARM_COLORS[key], label=label)
    acc.set_xticks(x, [name.replace(", ", "\n") for name in summary], fontsize=8)
    acc.set(ylabel="exact match / success (fraction of questions)", ylim=(0, 1.05),
            title=f"same model: tools vs direct (bars: {spread})")  # fmt: skip
    acc.title.set_fontsize(9)
    acc.legend(fontsize=8)
    width = 0.8 / len(summary)
    for i, (name, s) in enumerate(summary.items()):
        mean, err = zip(*(_mean_err(s[k], over_seeds) for k in COMPONENT), strict=True)
        comp.bar(np.arange(len(COMPONENT)) + (i - (len(summary) - 1) / 2) * width, mean, width, yerr=err,
                 capsize=3, color=SET_COLORS.get(name), label=name)  # fmt: skip
    comp.set_xticks(np.arange(len(COMPONENT)), COMPONENT, fontsize=7)
    comp.set(ylabel="fraction of agent steps\n(answer_extracted: of trajectories)", ylim=(0, 1.05),
             title="agent components")  # fmt: skip
    comp.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
