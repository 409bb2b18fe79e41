r"""Chain of thought vs direct answers: the same model trained with and without traces, accuracy by difficulty.

  python -m research.sweep --config experiments/cot_vs_direct.py --workdir workdirs/cot_vs_direct

Two SFT runs of one model size, budget and data order, on multi-digit addition
(research/data/reasoning.py, `add`) at several operand lengths mixed in one set:
  cot     think=1: every response writes the column-by-column trace, then the answer
  direct  think=0: every response is the answer alone
A trace turns an N-digit sum into N one-column steps the model can copy and add;
without it the model must carry through every column in one forward pass.
analyze() evaluates both runs greedily on the held-out prompts of each length and
writes results.md, results.json and cot_vs_direct.png (accuracy vs digits).

Sizes: a first tiny run on 1-4 digits for 1,000 steps put the traced model at the
ceiling at every length (1.000; direct 0.44 / 0.84 / 0.05 / 0.01), which shows nothing
about where CoT stops helping; the tiny scale now trains on 2-8 digits for 600 steps.
Arguments: scale=tiny|full, seed=N.
"""

import json

import numpy as np

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, operand digits, steps, batch, eval prompts per length
    "tiny": (2, 128, 4, (2, 4, 6, 8), 600, 32, 100),
    "full": (12, 768, 12, (2, 4, 6, 8, 10, 12), 10_000, 128, 500),
}


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"cot_vs_direct scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kinds(arg, think) -> str:
    return ",".join(f"add:digits={d}:think={think}" for d in SCALES[arg.scale][3])


def get_config(arg=None, think: int = 1):
    arg = _arg(arg)
    layers, d_model, heads, digits, steps, batch, _ = SCALES[arg.scale]
    return sft_config(kinds(arg, think), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=9 * max(digits) + 20, seed=arg.seed, seq_len=160, eval_examples=0)  # fmt: skip


def get_stages(arg=None):
    return [Stage("cot", get_config(arg, think=1)), Stage("direct", get_config(arg, think=0))]


def analyze(workdir, runs, arg=None):
    from research.data import instructions
    from research.reason.reasoner import Reasoner
    from research.train.runs import load_run

    arg = _arg(arg)
    *_, digits, _, _, n = SCALES[arg.scale]
    rows = {}
    for run, label in zip(runs, ("with traces (CoT)", "direct"), strict=True):
        reasoner, budget = Reasoner(load_run(run.workdir)), run.config.sft.max_new_tokens
        rows[label] = {}
        for d in digits:
            examples = [instructions.make_example(i, split="eval", seed=0, kinds=(f"add:digits={d}",))
                        for i in range(n)]  # fmt: skip
            out = reasoner.answer([e.prompt for e in examples], mode="free", max_new_tokens=budget)
            accuracy = float(reasoner.correct(examples, out).mean())
            rows[label][d] = dict(accuracy=accuracy, thinks=float(np.mean(out.thinking > 0)),
                                  tokens=float(out.lengths.mean()))  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| operand digits | " + " | ".join(f"{k}: accuracy (tokens)" for k in rows) + " |",
             "|---:|" + "---:|" * len(rows)]  # fmt: skip
    for d in digits:
        cells = [f"{r[d]['accuracy']:.3f} ({r[d]['tokens']:.1f})" for r in rows.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "cot_vs_direct.png")


def plot_seeds(workdir, merged, arg=None):
    """cot_vs_direct.png again from every seed's results: mean accuracy per length with ± std error bars."""
    del arg
    _plot(merged, workdir / "cot_vs_direct.png")


def _plot(rows, path):
    """Accuracy vs operand digits, a curve per run ({label: {digits: cells}}, digits as ints or, read back
    from results.json, strings); merged results get ± std error bars."""
    from matplotlib.figure import Figure

    from research.stats import mean_err

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    colors = {label: f"C{i}" for i, label in enumerate(rows)}
    for label, r in rows.items():
        digits = sorted(r, key=int)
        y, y_err = zip(*(mean_err(r[d]["accuracy"]) for d in digits), strict=True)
        ax.errorbar([int(d) for d in digits], y, yerr=y_err, fmt="o-", capsize=3, color=colors[label], label=label)
    ax.set(xlabel="operand digits (problem length)", ylabel="held-out accuracy (fraction, greedy)", ylim=(-0.02, 1.05),
           title="CoT vs direct, same model (bars: ± std over seeds)")  # fmt: skip
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
