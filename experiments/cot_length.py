r"""Test-time scaling: accuracy vs thinking tokens under budget forcing (caps, and "Wait"s), s1-style.

  python -m research.sweep --config experiments/cot_length.py --workdir workdirs/cot_length

The reference's "performance vs CoT length" figure. One SFT run whose responses all
think, on additions of 1 to D digits mixed (research/data/reasoning.py `add`: one
column per trace step, 9 tokens each, so a D-digit problem needs 9 D - 1 thinking
tokens). analyze() decodes held-out prompts of every length greedily under budget
forcing (research/reason/budget.py) and reports accuracy against the mean thinking
tokens actually spent:
  cap B      thinking is cut at B tokens (B = 9 j - 1: after j columns), `</think><answer>`
             is forced there and the model answers from what it has; B = 0 is the direct
             answer (`<answer>` forced first)
  m Waits    the model's first m attempts to close its thinking become "Wait ", so it is
             made to think longer than it chose to
Writes results.md, results.json and cot_length.png.

Sizes: a first run on 4-digit problems alone showed accuracy 0 for every cap short of
the full trace and 0.995 at it: a step, because a model cut off mid-trace does not
finish the sum in one pass. Mixing lengths makes the same fact a curve: a budget of j
columns solves the problems of at most j digits. The model never saw "Wait" in
training; what appending it does is what the m sweep measures. Arguments:
scale=tiny|full, seed=N.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, most operand digits, sft steps, batch, eval prompts per length
    "tiny": (2, 128, 4, 4, 800, 32, 50),
    "full": (12, 768, 12, 12, 10_000, 128, 200),
}
WAITS = (0, 1, 2, 4)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"cot_length scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kinds(arg) -> tuple[str, ...]:
    return tuple(f"add:digits={d}:think=1" for d in range(1, SCALES[arg.scale][3] + 1))


def full_trace(arg) -> int:
    return 9 * SCALES[arg.scale][3] - 1  # "x+y+c=zz" columns, space-separated


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, _, steps, batch, _ = SCALES[arg.scale]
    return sft_config(",".join(kinds(arg)), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=2 * full_trace(arg) + 24, seed=arg.seed, seq_len=160)  # fmt: skip


def get_stages(arg=None):
    return [Stage("sft", get_config(arg))]


def analyze(workdir, runs, arg=None):
    from research.data import instructions
    from research.reason.reasoner import Reasoner
    from research.train.runs import load_run

    arg = _arg(arg)
    n = SCALES[arg.scale][-1]
    run = runs[0]
    reasoner = Reasoner(load_run(run.workdir))
    examples = [
        instructions.make_example(i, split="eval", seed=0, kinds=kinds(arg)) for i in range(n * len(kinds(arg)))
    ]
    prompts, budget = [e.prompt for e in examples], run.config.sft.max_new_tokens
    settings = [("cap", 0, dict(mode="direct"))]
    # Caps at column boundaries: after j of the D columns the model must answer the other D - j directly.
    caps = [9 * j - 1 for j in range(1, SCALES[arg.scale][3] + 1)]
    settings += [("cap", b, dict(mode="think", max_thinking=b)) for b in caps]
    settings += [("waits", m, dict(mode="think", num_waits=m)) for m in WAITS]
    rows = []
    for method, value, kwargs in settings:
        out = reasoner.answer(prompts, max_new_tokens=budget, **kwargs)
        rows.append(dict(method=method, value=value, accuracy=float(reasoner.correct(examples, out).mean()),
                         thinking=float(out.thinking.mean())))  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| budget forcing | mean thinking tokens | held-out accuracy (greedy) |", "|---|---:|---:|"]
    for r in rows:
        label = ("direct (B = 0)" if r["value"] == 0 else f"cap B = {r['value']}") if r["method"] == "cap" else (
            f"m = {r['value']} Waits")  # fmt: skip
        lines.append(f"| {label} | {r['thinking']:.1f} | {r['accuracy']:.3f} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "cot_length.png")


def plot_seeds(workdir, merged, arg=None):
    """cot_length.png again from every seed's rows: mean accuracy and thinking tokens with ± std error bars."""
    del arg
    _plot(merged, workdir / "cot_length.png")


def _plot(rows, path):
    """Accuracy vs mean thinking tokens, a curve per budget-forcing method, points labelled by B or m;
    merged rows get ± std error bars on both axes."""
    from matplotlib.figure import Figure

    from research.stats import mean_err

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    methods = {"cap": ("o-", "cap at B tokens", "B"), "waits": ("s--", "m Waits appended", "m")}
    colors = {method: f"C{i}" for i, method in enumerate(methods)}
    for method, (style, label, letter) in methods.items():
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        x, x_err = zip(*(mean_err(r["thinking"]) for r in mine), strict=True)
        y, y_err = zip(*(mean_err(r["accuracy"]) for r in mine), strict=True)
        ax.errorbar(x, y, xerr=x_err, yerr=y_err, fmt=style, capsize=3, color=colors[method], label=label)
        for xi, yi, r in zip(x, y, mine, strict=True):
            ax.annotate(f"{letter}={r['value']}", (xi, yi), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=colors[method])  # fmt: skip
    ax.set(xlabel="mean thinking tokens per answer (tokens)", ylabel="held-out accuracy (fraction, greedy)",
           ylim=(-0.02, 1.05), title="accuracy vs CoT length (bars: ± std over seeds)")  # fmt: skip
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
