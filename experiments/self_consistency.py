r"""Self-consistency: majority vote over N sampled chains of thought, against pass@1 and pass@N, by temperature.

  python -m research.sweep --config experiments/self_consistency.py --workdir workdirs/self_consistency

One SFT run, every response a trace: the sum of several numbers
(research/data/reasoning.py, `sum`), whose trace adds them in a random order, so
two sampled paths to one answer truly differ and their mistakes are not copies of
each other. analyze() samples N_MAX chains per held-out prompt at each temperature
and reports, for N = 1, 2, 4, ... N_MAX:
  maj@N    the accuracy of the majority answer of the first N samples (ties: the
           earliest, research/reason/consistency.py)
  pass@N   the chance that one of N samples is right (unbiased estimator): the
           ceiling any selection among them could reach with an oracle
and the answer diversity (distinct answers per prompt). Greedy decoding is the
temperature-0 reference. Writes results.md, results.json, self_consistency.png.

Sizes: a first tiny run on four 2-digit numbers (800 steps) left greedy accuracy at
0.05 and 18-22 distinct answers in 32 samples: the floor, where no vote can help. The
tiny scale sums four 1-digit numbers instead, to put the base between 0 and 1. Arguments: scale=tiny|full, seed=N.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, numbers, digits, sft steps, batch, eval prompts, N max
    "tiny": (2, 128, 4, 4, 1, 800, 32, 100, 32),
    "full": (12, 768, 12, 8, 2, 10_000, 128, 500, 64),
}
TEMPERATURES = (0.5, 1.0, 1.5)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"self_consistency scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kind(arg) -> str:
    return f"sum:count={SCALES[arg.scale][3]}:digits={SCALES[arg.scale][4]}:think=1"


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, count, _, steps, batch, *_ = SCALES[arg.scale]
    return sft_config(kind(arg), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=12 * count + 16, seed=arg.seed)  # fmt: skip


def get_stages(arg=None):
    return [Stage("sft", get_config(arg))]


def analyze(workdir, runs, arg=None):
    from research.data import instructions, reasoning
    from research.reason.consistency import vote_curve
    from research.reason.reasoner import Reasoner
    from research.train.runs import load_run

    arg = _arg(arg)
    *_, n_prompts, n_max = SCALES[arg.scale]
    run = runs[0]
    reasoner = Reasoner(load_run(run.workdir))
    examples = [instructions.make_example(i, split="eval", seed=0, kinds=(kind(arg),)) for i in range(n_prompts)]
    prompts, gold = [e.prompt for e in examples], [reasoning.reference_answer(e.response) for e in examples]
    budget = run.config.sft.max_new_tokens
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= n_max]
    results = {}
    for temperature in (0.0, *TEMPERATURES):
        out = reasoner.answer(prompts, mode="think", max_new_tokens=budget, temperature=temperature,
                              num_samples=1 if temperature == 0 else n_max, seed=arg.seed)  # fmt: skip
        answers = [[reasoning.parse(t).answer for t in row] for row in out.texts]
        results[str(temperature)] = vote_curve(answers, gold, ns if temperature else [1])
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    greedy = results["0.0"]["pass@1"]
    lines = [f"Greedy (T=0) accuracy: {greedy:.3f} on {n_prompts} held-out prompts.", "",
             "| T | " + " | ".join(f"maj@{n}" for n in ns) + " | " + " | ".join(f"pass@{n}" for n in ns[1:])
             + " | distinct answers |", "|---:|" + "---:|" * (2 * len(ns))]  # fmt: skip
    for t in TEMPERATURES:
        r = results[str(t)]
        cells = [f"{r[f'maj@{n}']:.3f}" for n in ns] + [f"{r[f'pass@{n}']:.3f}" for n in ns[1:]]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {r['distinct_answers']:.2f} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, workdir / "self_consistency.png")


def plot_seeds(workdir, merged, arg=None):
    """self_consistency.png again from the seeds' merged results: means with ± std error bars over seeds."""
    del arg
    _plot(merged, workdir / "self_consistency.png")


def _plot(results: dict, path) -> None:
    """maj@N and pass@N vs N per temperature, and diversity vs one-sample accuracy, one colour per temperature
    in both panels; one seed's results or the seeds' merged ones (± std error bars and greedy band)."""
    from matplotlib.figure import Figure

    from research.stats import mean_err

    ns = sorted(int(k.removeprefix("maj@")) for k in results[str(TEMPERATURES[0])] if k.startswith("maj@"))
    colors = {t: f"C{i}" for i, t in enumerate(TEMPERATURES)}
    fig = Figure(figsize=(10, 3.5))
    vote, div = fig.subplots(1, 2)
    for t in TEMPERATURES:
        r, color = results[str(t)], colors[t]
        for metric, style in (("maj", "o-"), ("pass", "s:")):
            mean, err = zip(*(mean_err(r[f"{metric}@{n}"]) for n in ns), strict=True)
            vote.errorbar(ns, mean, yerr=err, fmt=style, capsize=3, color=color, label=f"{metric}@N, T={t}")
        (x, x_err), (y, y_err) = mean_err(r["distinct_answers"]), mean_err(r["pass@1"])
        div.errorbar([x], [y], xerr=[x_err], yerr=[y_err], fmt="o", capsize=3, color=color, label=f"T={t}")
    greedy, greedy_err = mean_err(results["0.0"]["pass@1"])
    vote.axhline(greedy, color="k", lw=0.8, label="greedy")
    vote.axhspan(greedy - greedy_err, greedy + greedy_err, color="k", alpha=0.1, lw=0)
    vote.set(xscale="log", xlabel="samples per prompt N", ylabel="held-out accuracy (fraction of prompts)",
             title="self-consistency (bars: ± std over seeds)")  # fmt: skip
    vote.title.set_fontsize(9)
    vote.set_xticks(ns, [str(n) for n in ns], minor=False)
    vote.set_xticks([], minor=True)
    div.set(xlabel="distinct answers per prompt (of all samples)", ylabel="pass@1 (fraction of samples right)",
            title="diversity vs accuracy")  # fmt: skip
    vote.legend(fontsize=6)
    div.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
