r"""Distillation: a small student trained on hard labels vs on a teacher's soft labels, same budget.

  python -m research.sweep --config experiments/distillation.py[:scale=tiny] --workdir workdirs/distillation

Stages (research/experiment.py):
1. teacher: the teacher LM (4 layers, d_model 128 at tiny scale) in WORKDIR/teacher.
2. student: the same student (2 layers, d_model 64: ~1/8 of the teacher's
   non-embedding parameters) from the same init on the same batches for the same
   steps, once per sweep entry, in WORKDIR/student/<run>: hard labels only
   (train.task=lm), and train.task=distill with the teacher's distributions
   softened by T = 1, 2, 4 (alpha = 1: soft labels only) and one hard/soft mix
   (T = 2, alpha = 0.5); distill.teacher_workdir is the teacher stage's workdir.
Then the students' validation loss (hard-label NLL on the same held-out batches)
and their KL to the teacher: results.md, results.json and distillation.png in WORKDIR.

`get_config(arg)` is the student's config (train.task=distill; for research.main its
distill.teacher_workdir names workdirs/distillation/teacher, where the command above
trains it); `get_teacher_config(arg)` the teacher's. `--config.*` overrides apply to
every run that has the key (train.steps: teacher and students).
Arguments: scale=tiny|full, steps=N (student steps).
"""

import json

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.experiment import Stage
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
TEACHER_WORKDIR = "workdirs/distillation/teacher"  # get_config's teacher outside the stages (README's workdir)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0)
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
    """The student, distilling from the teacher in distill.teacher_workdir."""
    arg = _arg(arg)
    _, student, seq_len, batch, _, steps = SCALES[arg.scale]
    c = with_task(_lm_config(student, seq_len, batch, arg.steps or steps, 2e-3), "distill")
    c.distill.teacher_workdir = TEACHER_WORKDIR
    return c


def get_stages(arg=None):
    return [
        Stage("teacher", get_teacher_config(arg)),
        Stage(
            "student",
            get_config(arg),
            inputs={"distill.teacher_workdir": "teacher"},
            sweep=tuple(dict(s) for s in SWEEP),
        ),
    ]


def analyze(workdir, runs, arg=None):
    """The students' final validation loss and KL to the teacher, against the hard-label student."""
    from research.train.metrics import read_metrics

    del arg
    rows = []
    for run in runs:
        if run.stage != "student":
            continue
        metrics = read_metrics(run.workdir)
        evals = [m for m in metrics if "eval_loss" in m]
        o = run.overrides
        hard = o.get("train.task") == "lm"
        rows.append(
            dict(
                name=run.name,
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


def plot_seeds(workdir, merged, arg=None):
    """distillation.png again from every seed's rows: mean validation curves with ± std bands over seeds."""
    del arg
    _plot(merged, workdir / "distillation.png")


def _plot(rows, path):
    """Validation loss vs student step, a curve per student (its own colour); merged rows get ± std bands."""
    from matplotlib.figure import Figure  # no pyplot: no display needed

    from research.stats import mean_err, plot_band

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    colors = {r["name"]: f"C{i}" for i, r in enumerate(rows)}
    for r in rows:
        label = "hard labels" if r["temperature"] is None else f"T={r['temperature']:g}, alpha={r['alpha']:g}"
        steps = [mean_err(s)[0] for s, _ in r["curve"]]
        plot_band(ax, steps, [v for _, v in r["curve"]], color=colors[r["name"]], label=label)
    ax.set_xlabel("student step (optimizer updates)")
    ax.set_ylabel("validation loss (hard-label NLL, nats per byte)")
    ax.set_title("Student: hard labels vs the teacher's soft labels (bands: ± std over seeds)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
