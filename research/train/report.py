"""End-of-run report in the workdir: results.md (the eval table) and loss.png (curves).

Whatever the task logs at eval time is tabulated: eval loss and perplexity for
language models, accuracy, exact match, reward or KL for the others (an RL task
has no eval loss). The plot shows the training loss and, in a second panel, the
eval metrics other than loss.
"""

import io

from etils import epath
from matplotlib.figure import Figure

from research.train.metrics import read_metrics

_MAX_COLUMNS = 8  # the table stays readable; metrics.jsonl keeps everything


def eval_columns(evals: list[dict]) -> list[str]:
    """Scalar keys logged at eval steps, in the order they first appear."""
    keys: dict[str, None] = {}
    for e in evals:
        for k, v in e.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k)
    return list(keys)[:_MAX_COLUMNS]


def _fmt(v) -> str:
    return "" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"


def write_report(workdir, title: str = "") -> None:
    workdir = epath.Path(workdir)
    metrics = read_metrics(workdir)
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    by_step = {m["step"]: m for m in metrics if "loss" in m}
    # Train log lines carry nonfinite_steps (and loss, unless every step of the window was skipped).
    evals = [m for m in metrics if m["step"] > 0 and not {"loss", "nonfinite_steps", "num_params"} & set(m)]
    columns = eval_columns(evals)
    lines = [
        "| step | train loss | " + " | ".join(columns) + " | tokens/s |",
        "|---:|---:|" + "---:|" * len(columns) + "---:|",
    ]
    for e in evals:
        t = by_step.get(e["step"], {})
        cells = [_fmt(e.get(k)) for k in columns]
        lines.append(
            f"| {e['step']} | {_fmt(t.get('loss'))} | " + " | ".join(cells) + f" | {_fmt(t.get('tokens_per_sec'))} |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    if not train:
        return
    others = [k for k in columns if k not in ("eval_loss", "eval_perplexity")]
    # A bare Figure, not pyplot: it needs no display and leaves the caller's
    # matplotlib backend alone (a notebook importing the loop keeps inline plots).
    fig = Figure(figsize=(11 if others else 6, 3.5))
    axes = fig.subplots(1, 2 if others else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot(*zip(*train, strict=True), label="train (window mean)")
    loss_evals = [e for e in evals if "eval_loss" in e]
    if loss_evals:
        ax.plot([e["step"] for e in loss_evals], [e["eval_loss"] for e in loss_evals], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or workdir.name)
    ax.legend()
    if others:
        for k in others[:4]:
            points = [(e["step"], e[k]) for e in evals if k in e]
            axes[1].plot(*zip(*points, strict=True), "o-", label=k)
        axes[1].set_xlabel("step")
        axes[1].set_title("eval")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()  # through etils, so a gs:// workdir gets its plot too
    fig.savefig(image, format="png", dpi=100)
    (workdir / "loss.png").write_bytes(image.getvalue())
