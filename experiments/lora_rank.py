r"""Fine-tuning: full vs LoRA r in {1, 2, 4, 8, 16, 64} vs prefix tuning vs adapters, on the instruction set.

  python -m experiments.lora_rank --workdir workdirs/lora_rank [--arg scale=tiny]

1. Pretrains a small byte-level LM on the stdlib corpus in WORKDIR/base (skipped
   when finished; `--arg base=DIR` uses another finished LM run of the same shape).
2. Fine-tunes it on research.data.instructions (train.task=sft) once per
   variant, same batches, same steps: every parameter (train.init_from = base),
   LoRA on the attention projections (q, k, v, out) at each rank, prefix tuning
   and adapters (base frozen, read from sft.base_workdir).
3. Measures per variant: exact match of greedy answers on held-out prompts
   (overall and per task kind), trainable parameters, seconds per train step
   (median of the logged windows, compilation excluded) and the compiled train
   step's memory (XLA's buffer assignment: arguments + outputs - donated + temporaries,
   for one device: deterministic, unlike a noisy process RSS on a shared CPU).
Writes results.md, results.json and lora_rank.png in the workdir.

Learning rates: 1e-3 for full fine-tuning, 3e-3 for LoRA and adapters, whose few
parameters start at a no-op and need larger steps, and 3e-2 for prefix tuning, whose
keys/values must grow from nothing to the scale of the model's own (at 3e-3 the prefix
barely moved in 200 steps: val loss 5.10, the base's own level); everything else is shared.
Arguments: scale=tiny|full, steps=N (fine-tuning steps), base=DIR.
"""

import argparse
import json

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.train.tasks import with_task

SCALES = {
    # layers, d_model, heads, kv_heads, seq_len, batch, pretrain steps, fine-tune steps, eval prompts
    "tiny": (2, 128, 4, 2, 128, 16, 400, 200, 100),
    "full": (12, 768, 12, 4, 512, 64, 20_000, 2_000, 1_000),
}
FULL_LR = 1e-3
PEFT_LR = {"lora": 3e-3, "adapter": 3e-3, "prefix": 3e-2}
VARIANTS = [
    ("full", {"peft.method": "none"}),
    *[(f"lora_r{r}", {"peft.method": "lora", "peft.rank": r, "peft.alpha": 2.0 * r}) for r in (1, 2, 4, 8, 16, 64)],
    ("prefix", {"peft.method": "prefix", "peft.prefix_len": 8}),
    ("adapter", {"peft.method": "adapter", "peft.adapter_dim": 16}),
]


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0, base="")
    if arg.scale not in SCALES:
        raise ValueError(f"lora_rank scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_base_config(arg=None):
    """The pretrained LM: next-token loss on the stdlib corpus."""
    arg = _arg(arg)
    layers, d_model, heads, kv_heads, seq_len, batch, steps, _, _ = SCALES[arg.scale]
    c = default_config()
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=kv_heads,
        ffn="swiglu",
        norm="rmsnorm",
        position="rope",
        mlp_dim=swiglu_mlp_dim(d_model),
    )
    c.data.seq_len = seq_len
    c.train.update(
        steps=steps, batch_size=batch, eval_every=steps, checkpoint_every=steps, eval_batches=4, log_every=50
    )
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10))
    return c


def get_config(arg=None):
    """Full fine-tuning of the base on the instruction set; the variants override peft.*."""
    parsed = _arg(arg)
    *_, steps, eval_prompts = SCALES[parsed.scale]
    steps = parsed.steps or steps
    base = parsed.base or "workdirs/lora_rank/base"
    c = with_task(get_base_config(arg), "sft")
    c.train.update(
        init_from=base,
        steps=steps,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=max(steps // 10, 1),
        eval_batches=4,
        seed=1,  # another shuffle than the pretraining run's
    )
    c.optim.update(learning_rate=FULL_LR, warmup_steps=min(20, steps // 10), weight_decay=0.0)
    c.sft.update(base_workdir=base, eval_examples=eval_prompts, max_new_tokens=14)
    return c


def get_sweep(arg=None):
    """Overrides per variant (PEFT variants read the base from sft.base_workdir, not train.init_from)."""
    del arg
    out = []
    for _, overrides in VARIANTS:
        o = dict(overrides)
        if o["peft.method"] != "none":
            o.update({"train.init_from": "", "optim.learning_rate": PEFT_LR[o["peft.method"]]})
        out.append(o)
    return out


def step_memory_bytes(config) -> int:
    """Bytes XLA assigns to one compiled train step on one device (arguments + outputs - donated + temps)."""
    import functools

    import jax

    from research.tokenizers import ByteTokenizer
    from research.train.sharding import make_mesh, strip_boxes
    from research.train.state import make_optimizer, state_shapes
    from research.train.step import train_step
    from research.train.tasks_sft import SFTTask

    config = config.copy_and_resolve_references()
    config.mesh.update(data=1)
    task = SFTTask(config, ByteTokenizer())
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        tx = make_optimizer(config.optim, config.train.steps)
        state, _ = state_shapes(task.model, tx, mesh, init_fn=task.init_params)
        frozen = None if task.spec.method == "none" else strip_boxes(jax.eval_shape(task.base_init, jax.random.key(0)))
        rows = (config.train.batch_size, config.data.seq_len)
        batch = {k: jax.ShapeDtypeStruct(rows, "int32") for k in ("tokens", "segment_ids", "positions", "loss_mask")}
        step = functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=lambda s: 1e-3, loss_fn=task.loss)
        m = jax.jit(step, donate_argnums=0).lower(state, batch, frozen).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def run(workdir, arg=None):
    from etils import epath

    from research.sweep import apply_overrides
    from research.train.loop import train

    workdir = epath.Path(workdir).absolute()
    parsed = _arg(arg)
    base_dir = epath.Path(parsed.base).absolute() if parsed.base else workdir / "base"
    if not parsed.base:
        train(get_base_config(arg), base_dir)  # resumes, or does nothing when finished
    config = get_config(arg)
    config.train.init_from = config.sft.base_workdir = str(base_dir)
    runs = []
    for (name, _), overrides in zip(VARIANTS, get_sweep(arg), strict=True):
        run_config = apply_overrides(config, overrides)
        print(f"--- {name}", flush=True)
        train(run_config, workdir / name)
        runs.append({"name": name, "overrides": overrides, "workdir": workdir / name, "config": run_config})
    analyze(workdir, runs, arg)
    return runs


def analyze(workdir, runs, arg=None):
    import numpy as np

    from research.train.metrics import read_metrics

    rows = []
    for run in runs:
        metrics = read_metrics(run["workdir"])
        config = run.get("config") or json.loads((run["workdir"] / "config.json").read_text())
        tokens_per_step = config["train"]["batch_size"] * config["data"]["seq_len"]
        rates = [m["tokens_per_sec"] for m in metrics if m.get("tokens_per_sec")]
        final = [m for m in metrics if "exact_match" in m][-1]
        rows.append(
            dict(
                name=run["name"],
                trainable_params=next(m["num_params"] for m in metrics if "num_params" in m),
                exact_match=final["exact_match"],
                per_kind={k.removeprefix("exact_match_"): v for k, v in final.items() if k.startswith("exact_match_")},
                eval_loss=final["eval_loss"],
                step_seconds=float(np.median([tokens_per_step / r for r in rates])),
                step_memory_bytes=step_memory_bytes(run["config"]) if "config" in run else None,
            )
        )
    full = rows[0]["trainable_params"]
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    kinds = list(rows[0]["per_kind"])
    lines = [
        "| method | trainable params | % of full | exact match | "
        + " | ".join(kinds)
        + " | val loss (response) | s / step | step memory (MB) |",
        "|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|---:|---:|",
    ]
    for r in rows:
        memory = "" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 1e6:.1f}"
        lines.append(
            f"| {r['name']} | {r['trainable_params']:,} | {100 * r['trainable_params'] / full:.2f}% | "
            f"{r['exact_match']:.2f} | "
            + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds)
            + f" | {r['eval_loss']:.3f} | {r['step_seconds']:.3f} | {memory} |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "lora_rank.png")


def _plot(rows, path):
    from matplotlib.figure import Figure  # no pyplot: no display needed, caller's backend untouched

    fig = Figure(figsize=(11, 4))
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("eval_loss", "exact_match"),
        ("validation loss on response tokens", "exact match (held-out prompts)"),
        strict=True,
    ):
        for r in rows:
            marker = "s" if r["name"] == "full" else ("o" if r["name"].startswith("lora") else "^")
            ax.plot(r["trainable_params"], r[key], marker, color="C0" if marker == "o" else "C1")
            ax.annotate(r["name"], (r["trainable_params"], r[key]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)  # fmt: skip
        lora = sorted((r["trainable_params"], r[key]) for r in rows if r["name"].startswith("lora"))
        ax.plot([p for p, _ in lora], [v for _, v in lora], "-", color="C0", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(label)
    fig.suptitle("Instruction tuning: full vs LoRA rank vs prefix vs adapters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--arg", default=None, help="scale=tiny|full,steps=N,base=DIR (as after ':' in --config)")
    args = parser.parse_args()
    run(args.workdir, args.arg)


if __name__ == "__main__":
    main()
