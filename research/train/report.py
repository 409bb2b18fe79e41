"""End-of-run report in the workdir: results.md (eval table) and loss.png (curves)."""

from etils import epath
from matplotlib.figure import Figure

from research.train.metrics import read_metrics


def write_report(workdir, title: str = "") -> None:
    workdir = epath.Path(workdir)
    metrics = read_metrics(workdir)
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    lines = ["| step | train loss | eval loss | eval perplexity | tokens/s |", "|---:|---:|---:|---:|---:|"]
    by_step = {m["step"]: m for m in metrics if "loss" in m}
    for e in evals:
        t = by_step.get(e["step"], {})
        loss = f"{t['loss']:.3f}" if "loss" in t else ""
        tok_s = f"{t['tokens_per_sec']:,.0f}" if t.get("tokens_per_sec") else ""
        lines.append(f"| {e['step']} | {loss} | {e['eval_loss']:.3f} | {e['eval_perplexity']:.2f} | {tok_s} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    if not train:
        return
    # A bare Figure, not pyplot: it needs no display and leaves the caller's
    # matplotlib backend alone (a notebook importing the loop keeps inline plots).
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(*zip(*train, strict=True), label="train (window mean)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or workdir.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "loss.png", dpi=100)
