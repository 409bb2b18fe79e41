r"""Mixture of Experts vs dense FFNs at the same token budget.

  python -m research.sweep --config experiments/moe_vs_dense.py --workdir workdirs/moe_vs_dense

Every block's FFN is either dense (width f) or a Mixture of E experts, top-k,
each of width f / k, so a token passes through as many FFN parameters as in the
dense model (equal *active* parameters) while the layer holds E / k times more.
The runs, all on the same batches for the same steps:

  dense           width f                  (active = MoE's active)
  dense_wide      width f * E / k          (total  = MoE's total)
  moe             E experts, top-k, Switch aux loss + router z-loss
  moe_no_aux      the same without the load-balancing loss (does routing collapse?)
  moe_dropless    the same as moe, dropless (ragged_dot): nothing dropped; tokens/s of the grouped matmul

Writes results.md / results.json (final validation loss, tokens/s, parameters,
load balance) and moe_vs_dense.png (validation loss vs step, load imbalance over
training). Tokens/s is also re-measured with every model's train step taking
turns in one process: the runs trained at different times on a shared machine.
Arguments: `scale=tiny|full` (tiny: ~10 minutes on 2 CPU cores;
full: for an accelerator), `steps=N` overrides the step count.
"""

import json

from research.config import default_config, parse_arg, swiglu_mlp_dim

SCALES = {
    # layers, d_model, heads, seq_len, batch, steps, experts, top_k, eval_every
    "tiny": (2, 128, 4, 128, 16, 300, 8, 2, 50),
    "full": (12, 768, 12, 1024, 128, 20_000, 8, 2, 1000),
}
RUNS = ("dense", "dense_wide", "moe", "moe_no_aux", "moe_dropless")


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0)
    if arg.scale not in SCALES:
        raise ValueError(f"moe_vs_dense scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, seq_len, batch, steps, _, _, eval_every = SCALES[arg.scale]
    steps = arg.steps or steps
    c = default_config()
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=heads,
        position="rope",
        norm="rmsnorm",
        ffn="swiglu",
        mlp_dim=swiglu_mlp_dim(d_model),
    )
    c.data.seq_len = seq_len
    c.train.update(
        steps=steps,
        batch_size=batch,
        eval_every=min(eval_every, steps),
        checkpoint_every=steps,
        log_every=max(steps // 12, 1),
        eval_batches=4,
    )
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10))
    return c


def get_sweep(arg=None):
    *_, experts, top_k, _ = SCALES[_arg(arg).scale]
    f = get_config(arg).model.mlp_dim
    moe = {
        "model.moe_num_experts": experts,
        "model.moe_top_k": top_k,
        "model.moe_every": 1,
        "model.moe_mlp_dim": f // top_k,
    }
    return [
        {"model.mlp_dim": f},
        {"model.mlp_dim": f * experts // top_k},
        moe,
        {**moe, "model.moe_aux_weight": 0.0},
        {**moe, "model.moe_dropless": True},
    ]


def _active_params(config, total: int) -> int:
    """Parameters a token passes through: an MoE layer's unchosen experts don't count."""
    m = config.model
    if m.moe_num_experts == 0:
        return total
    per_expert = 3 * m.d_model * m.moe_mlp_dim  # SwiGLU: wi_gate, wi_up, wo
    moe_layers = sum((i + 1) % m.moe_every == 0 for i in range(m.num_layers))
    return total - moe_layers * (m.moe_num_experts - m.moe_top_k) * per_expert


def analyze(workdir, runs, arg=None):
    import statistics

    from ml_collections import ConfigDict

    from research.train.metrics import read_metrics

    rows = []
    for label, run in zip(RUNS, runs, strict=True):
        config = ConfigDict(json.loads((run.workdir / "config.json").read_text()))
        metrics = read_metrics(run.workdir)
        total = next(m["num_params"] for m in metrics if "num_params" in m)
        evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
        train = [m for m in metrics if "tokens_per_sec" in m]
        speeds = [m["tokens_per_sec"] for m in train if m["tokens_per_sec"]]
        loads = [m for m in train if "moe_load" in m]
        rows.append(
            {
                "run": label,
                "total_params": total,
                "active_params": _active_params(config, total),
                "eval_loss": evals[-1][1],
                "eval_curve": evals,
                "tokens_per_sec": statistics.median(speeds),
                "final_load": loads[-1]["moe_load"] if loads else None,  # mean over layers
                "imbalance": loads[-1]["moe_imbalance"] if loads else None,  # per layer, then mean
                "imbalance_curve": [(m["step"], m["moe_imbalance"]) for m in loads],
                "dropped_fraction": train[-1].get("moe_dropped_fraction"),
                "aux_loss": train[-1].get("moe_aux_loss"),
            }
        )
    speeds = _interleaved_tokens_per_sec([r.workdir for r in runs])
    for r, speed in zip(rows, speeds, strict=True):
        r["interleaved_tokens_per_sec"] = speed
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    dense_speed = rows[0]["interleaved_tokens_per_sec"]
    lines = [
        "| run | total params | active params | val loss | tokens/s in training | tokens/s interleaved "
        "(vs dense) | load imbalance E·max f | dropped | aux loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        moe = r["final_load"] is not None
        speed = r["interleaved_tokens_per_sec"]
        lines.append(
            f"| {r['run']} | {r['total_params'] / 1e6:.2f}M | {r['active_params'] / 1e6:.2f}M | "
            f"{r['eval_loss']:.3f} | {r['tokens_per_sec']:,.0f} | {speed:,.0f} ({speed / dense_speed:.2f}x) | "
            + (f"{r['imbalance']:.2f} | {r['dropped_fraction']:.1%} | {r['aux_loss']:.3f} |" if moe else "– | – | – |")
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "moe_vs_dense.png")


def _interleaved_tokens_per_sec(run_dirs, rounds: int = 5, steps: int = 3) -> list[float]:
    """Each run's train step on one random batch, timed in turns within one process.

    The runs trained one after another on a shared, noisy machine; taking turns
    here exposes every model to the same load, so the ratios are comparable.
    """
    import functools
    import time

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict

    from research.config import model_config
    from research.models import DecoderLM
    from research.tokenizers import load_tokenizer
    from research.train.sharding import LOGICAL_RULES, batch_sharding, make_mesh
    from research.train.state import create_train_state, learning_rate_schedule, make_optimizer
    from research.train.step import train_step

    mesh = make_mesh(dict(data=-1))
    jobs = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        for run_dir in run_dirs:
            config = ConfigDict(json.loads((run_dir / "config.json").read_text()))
            vocab = load_tokenizer(run_dir / "tokenizer.json").vocab_size
            model = DecoderLM(model_config(config, vocab))
            tx = make_optimizer(config.optim, 1000)
            state, shardings = create_train_state(model, tx, mesh, jax.random.key(0))
            lr = learning_rate_schedule(config.optim, 1000)
            step = jax.jit(
                functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=lr),
                in_shardings=(shardings, batch_sharding(mesh)),
                donate_argnums=0,
            )
            shape = (config.train.batch_size, config.data.seq_len)
            tokens = jax.random.randint(jax.random.key(1), shape, 3, vocab)
            batch = {
                "tokens": tokens,
                "segment_ids": jnp.ones_like(tokens),
                "positions": jnp.broadcast_to(jnp.arange(shape[1]), shape),
            }
            state, metrics = step(state, batch)  # compiles
            jax.block_until_ready(metrics)
            jobs.append([step, state, batch, 0.0])
        for _ in range(rounds):
            for job in jobs:
                step, state, batch, _ = job
                start = time.perf_counter()
                for _ in range(steps):
                    state, metrics = step(state, batch)
                jax.block_until_ready(metrics)
                job[1] = state
                job[3] += time.perf_counter() - start
    return [rounds * steps * int(job[2]["tokens"].size) / job[3] for job in jobs]


def plot_seeds(workdir, merged, arg=None):
    """moe_vs_dense.png again from the seeds' merged rows: mean curves with ± std bands over seeds."""
    del arg
    _plot(merged, workdir / "moe_vs_dense.png")


def _plot(rows, path):
    """Validation loss and load imbalance vs step, one colour per run; merged rows get ± std bands."""
    from matplotlib.figure import Figure  # no pyplot: no display needed, caller's backend untouched

    from research.stats import plot_band

    colors = {run: f"C{i}" for i, run in enumerate(RUNS)}  # one colour per run in both panels
    fig = Figure(figsize=(11, 4))
    loss_ax, load_ax = fig.subplots(1, 2)
    for r in rows:
        for ax, key in ((loss_ax, "eval_curve"), (load_ax, "imbalance_curve")):
            if not r[key]:  # dense runs have no router
                continue
            plot_band(ax, [s for s, _ in r[key]], [y for _, y in r[key]], color=colors.get(r["run"]), label=r["run"])
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("validation loss (nats / token)")
    loss_ax.set_title("Same tokens: dense vs MoE (bands: ± std over seeds)")
    loss_ax.legend()
    load_ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)  # perfectly balanced
    load_ax.set_xlabel("training step")
    load_ax.set_ylabel("E · max_i load_i (1 = balanced; no unit)")
    load_ax.set_title("Load imbalance (per MoE layer, mean over layers)")
    load_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
