r"""Distillation: a small student trained on hard labels vs on a teacher's soft labels, same budget.

  python -m experiments.distillation --workdir workdirs/distillation [--arg scale=tiny]

1. Trains the teacher (a 4-layer, d_model-128 LM at tiny scale) in WORKDIR/teacher.
2. Trains the same student (2 layers, d_model 64: ~1/8 of the teacher's
   non-embedding parameters) from the same init on the same batches for the same
   steps, once per sweep entry: hard labels only (train.task=lm), and
   train.task=distill with the teacher's distributions softened by T = 1, 2, 4
   (alpha = 1: soft labels only) and one hard/soft mix (T = 2, alpha = 0.5).
3. Compares the students' validation loss (hard-label NLL on the same held-out
   batches) and their KL to the teacher. Writes results.md, results.json and
   distillation.png in the workdir.

`get_config(arg)` is the student's config (train.task=distill); `get_sweep(arg)` the
variants, so `python -m research.sweep --config experiments/distillation.py:teacher=DIR
--workdir W` reruns the students against any finished teacher workdir.
Arguments: scale=tiny|full, steps=N (student steps), teacher=DIR.
"""

import argparse
import json
import sys

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.train.tasks import with_task

SCALES = {
    # teacher (layers, d_model, heads), student (layers, d_model, heads), seq_len, batch, teacher steps, student steps
    "tiny": ((4, 128, 4), (2, 64, 2), 128, 16, 400, 300),
    "full": ((12, 768, 12), (6, 384, 6), 1024, 64, 20_000, 10_000),
}
SWEEP = [
    {"train.task": "lm"},
    {"distill.temperature": 1.0, "distill.alpha": 1.0},
    {"distill.temperature": 2.0, "distill.alpha": 1.0},
    {"distill.temperature": 4.0, "distill.alpha": 1.0},
    {"distill.temperature": 2.0, "distill.alpha": 0.5},
]


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0, teacher="workdirs/distillation/teacher")
    if arg.scale not in SCALES:
        raise ValueError(f"distillation scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def _lm_config(shape, seq_len, batch, steps, lr):
    layers, d_model, heads = shape
    c = default_config()
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=heads,
        ffn="swiglu",
        norm="rmsnorm",
        position="rope",
        mlp_dim=swiglu_mlp_dim(d_model),
    )
    c.data.seq_len = seq_len
    c.train.update(
        steps=steps,
        batch_size=batch,
        eval_every=max(steps // 4, 1),
        checkpoint_every=steps,
        eval_batches=8,
        log_every=max(steps // 30, 1),
    )
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10))
    return c


def get_teacher_config(arg=None):
    arg = _arg(arg)
    teacher, _, seq_len, batch, teacher_steps, _ = SCALES[arg.scale]
    return _lm_config(teacher, seq_len, batch, teacher_steps, 2e-3)


def get_config(arg=None):
    """The student, distilling from `teacher` (default: where `main` trains it)."""
    arg = _arg(arg)
    _, student, seq_len, batch, _, steps = SCALES[arg.scale]
    c = with_task(_lm_config(student, seq_len, batch, arg.steps or steps, 2e-3), "distill")
    c.distill.teacher_workdir = arg.teacher
    return c


def get_sweep(arg=None):
    del arg
    return [dict(s) for s in SWEEP]


def analyze(workdir, runs, arg=None):
    from research.train.metrics import read_metrics

    rows = []
    for run in runs:
        metrics = read_metrics(run["workdir"])
        evals = [m for m in metrics if "eval_loss" in m]
        o = run["overrides"]
        hard = o.get("train.task") == "lm"
        rows.append(
            dict(
                name=run["name"],
                labels="hard" if hard else ("soft" if o["distill.alpha"] == 1.0 else "soft + hard"),
                temperature=None if hard else o["distill.temperature"],
                alpha=0.0 if hard else o["distill.alpha"],
                eval_loss=evals[-1]["eval_loss"],
                eval_kl=evals[-1].get("eval_kl"),
                curve=[(m["step"], m["eval_loss"]) for m in evals],
            )
        )
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    hard_loss = next(r["eval_loss"] for r in rows if r["labels"] == "hard")
    lines = [
        "| student trained on | T | alpha (soft weight) | val loss | vs hard labels | val KL to teacher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kl = "" if r["eval_kl"] is None else f"{r['eval_kl']:.4f}"
        t = "" if r["temperature"] is None else f"{r['temperature']:g}"
        delta = r["eval_loss"] - hard_loss
        lines.append(f"| {r['labels']} | {t} | {r['alpha']:g} | {r['eval_loss']:.4f} | {delta:+.4f} | {kl} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "distillation.png")


def _plot(rows, path):
    from matplotlib.figure import Figure  # no pyplot: no display needed

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for r in rows:
        label = "hard labels" if r["temperature"] is None else f"T={r['temperature']:g}, alpha={r['alpha']:g}"
        ax.plot([s for s, _ in r["curve"]], [v for _, v in r["curve"]], "o-", label=label)
    ax.set_xlabel("student step")
    ax.set_ylabel("validation loss (hard-label NLL)")
    ax.set_title("Student: hard labels vs the teacher's soft labels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(workdir, arg=None):
    from etils import epath

    from research.sweep import run_sweep
    from research.train.loop import train

    workdir = epath.Path(workdir).absolute()
    teacher = workdir / "teacher"
    train(get_teacher_config(arg), teacher)  # resumes, or does nothing when finished
    base = get_config(arg)
    base.distill.teacher_workdir = str(teacher)
    return run_sweep(base, sys.modules[__name__], arg, workdir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--arg", default=None, help="scale=tiny|full,steps=N (as after ':' in --config)")
    args = parser.parse_args()
    run(args.workdir, args.arg)


if __name__ == "__main__":
    main()
