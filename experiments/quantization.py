r"""Weight-only quantization of a trained LM: float32 / bf16 / int8 / int4 / NF4, and QLoRA vs LoRA.

  python -m research.sweep --config experiments/quantization.py[:scale=tiny] --workdir workdirs/quantization

Stages (research/experiment.py), each one run in WORKDIR/<stage>:
1. base: pretrains the base LM (get_config) on the stdlib corpus.
2. lora and qlora: the same LoRA (rank 8 on the attention projections, alpha 16,
   same init, same steps and batches) fine-tuned on the instruction set
   (train.task=sft, loss on response tokens) over the base run's weights
   (sft.base_workdir): in float32 (lora), and stored as NF4 with double-quantized
   scales (qlora: quant.format=nf4, the frozen base quantized, LoRA over it).
3. analyze stores the base's weights in each format (research.quant: codes packed,
   scales per output channel or per group of 64 input rows, NF4 optionally with
   double-quantized scales; embeddings stay float32) and measures the stored bytes,
   the weight error, the validation perplexity on the same held-out batches, and
   greedy generation tokens/s (research.decode), all on the same quantized tree the
   model runs from; and compares the two fine-tuning runs: base bytes, trainable
   parameters, response-token validation loss before (LoRA at init: the base alone,
   float32 or NF4) and after fine-tuning, and their train loss step by step.

Writes results.md, results.json and quantization.png in WORKDIR. `get_config(arg)`
is the base LM's config; `get_finetune_config(arg, quantized)` the fine-tuning runs'.
`--config.*` overrides apply to every run that has the key (train.steps: all three).
Arguments: scale=tiny|full, steps=N (base steps), finetune_steps=N.
"""

import json
import time

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.experiment import Stage
from research.train.tasks import with_task

SCALES = {
    # layers, d_model, heads, kv_heads, seq_len, batch, steps, learning_rate, finetune_steps, generated tokens
    "tiny": (4, 128, 4, 2, 128, 16, 400, 2e-3, 100, 96),
    "full": (12, 768, 12, 4, 1024, 64, 20_000, 6e-4, 1_000, 256),
}
# label -> (format, quantize options); "float32" and "bfloat16" are casts, not research.quant formats.
FORMATS = {
    "float32": ("float32", {}),
    "bfloat16": ("bfloat16", {}),
    "int8 per-channel": ("int8", dict(group_size=-1)),
    "int8 g64": ("int8", dict(group_size=64)),
    "int4 per-channel": ("int4", dict(group_size=-1)),
    "int4 g64": ("int4", dict(group_size=64)),
    "nf4 g64": ("nf4", dict(group_size=64)),
    "nf4 g64 + double quant": ("nf4", dict(group_size=64, double_quant=True)),
}
LORA = dict(rank=8, alpha=16.0, target=r"attn/(query|key|value|out)$", learning_rate=2e-3)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0, finetune_steps=0)
    if arg.scale not in SCALES:
        raise ValueError(f"quantization scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_config(arg=None):
    """The base LM (the quickstart's shape at tiny scale)."""
    arg = _arg(arg)
    layers, d_model, heads, kv_heads, seq_len, batch, steps, lr, _, _ = SCALES[arg.scale]
    steps = arg.steps or steps
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
    c.optim.update(learning_rate=lr, warmup_steps=min(50, steps // 10))
    c.quant.update(group_size=64, exclude="embed")
    return c


def get_finetune_config(arg=None, quantized: bool = False):
    """LoRA fine-tuning on the instruction set over a frozen base (sft.base_workdir), NF4 if `quantized`."""
    parsed = _arg(arg)
    steps = parsed.finetune_steps or SCALES[parsed.scale][8]
    c = with_task(get_config(arg), "sft")
    c.train.update(
        steps=steps,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=max(steps // 100, 1),  # every step at tiny scale: the plot compares the runs step by step
    )
    c.optim.update(learning_rate=LORA["learning_rate"], warmup_steps=steps // 10, min_lr_ratio=0.0, weight_decay=0.0)
    c.peft.update(method="lora", rank=LORA["rank"], alpha=LORA["alpha"], target=LORA["target"])
    c.sft.update(eval_examples=0)  # the response loss is the measure: no generation at eval
    if quantized:  # "nf4 g64 + double quant" (group_size and exclude come from get_config)
        c.quant.update(format="nf4", double_quant=True)
    return c


def get_stages(arg=None):
    reads_base = {"sft.base_workdir": "base"}
    return [
        Stage("base", get_config(arg)),
        Stage("lora", get_finetune_config(arg), inputs=reads_base),
        Stage("qlora", get_finetune_config(arg, quantized=True), inputs=reads_base),
    ]


def quantized_tree(params, label):
    import jax
    import jax.numpy as jnp

    from research.quant import quantize_params

    fmt, options = FORMATS[label]
    if fmt in ("float32", "bfloat16"):
        return jax.tree.map(lambda x: x.astype(jnp.dtype(fmt)), params)
    return quantize_params(params, fmt, exclude="embed", **options)


def weight_error(params, tree):
    """||W - dequant(Q)|| / ||W|| over the matrices the formats quantize (rank >= 2, not the embedding)."""
    import jax
    import jax.numpy as jnp

    from research.quant import dequantize_params
    from research.quant.transform import path_str

    restored = dequantize_params(tree)
    err = norm = 0.0
    for (path, w), w_hat in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(restored), strict=True):
        if w.ndim >= 2 and "embed" not in path_str(path):
            err += float(jnp.sum((w - w_hat.astype(jnp.float32)) ** 2))
            norm += float(jnp.sum(w**2))
    return (err / norm) ** 0.5


def measure_formats(model, params, eval_batches, tokenizer, new_tokens, rounds=5):
    """One row per format: stored bytes, weight error, validation loss/perplexity, generation tokens/s."""
    import jax
    import numpy as np

    from research.decode import generate
    from research.quant import param_bytes, quantized_model
    from research.train.step import lm_loss_sums

    qmodel = quantized_model(model)
    eval_fn = jax.jit(lambda p, b: lm_loss_sums(p, qmodel.apply, b))
    prompts = [list(row[:16]) for row in eval_batches[0]["tokens"][:8]]  # 8 prompts of 16 held-out tokens
    args = dict(max_new_tokens=new_tokens, pad_id=tokenizer.pad_id)
    trees = {label: quantized_tree(params, label) for label in FORMATS}
    rows = []
    for label, tree in trees.items():
        total = count = 0.0
        for batch in eval_batches:
            s, c = eval_fn(tree, batch)
            total, count = total + float(s), count + float(c)
        generate(qmodel, tree, prompts, **args)  # compile
        rows.append(
            dict(
                format=label,
                weight_bytes=param_bytes(tree),
                weight_rel_error=weight_error(params, tree),
                eval_loss=total / count,
                eval_perplexity=float(np.exp(total / count)),
            )
        )
    # Generation timed round-robin over the formats, best of `rounds` each: the machine is
    # shared, so every format sees the same spread of disturbance and the minimum is the cleanest.
    seconds = {label: [] for label in trees}
    for _ in range(rounds):
        for label, tree in trees.items():
            start = time.perf_counter()
            generate(qmodel, tree, prompts, **args)  # returns Python lists: synchronous
            seconds[label].append(time.perf_counter() - start)
    for row in rows:
        row["generate_tokens_per_sec"] = len(prompts) * new_tokens / min(seconds[row["format"]])
        print(row, flush=True)
    return rows


def finetune_result(run) -> dict:
    """A finished LoRA / QLoRA run: validation loss with LoRA at zero (the base alone) and as trained,
    on the run's own eval batches, its base's bytes, trainable parameters and train loss per logged step."""
    import jax
    import jax.numpy as jnp

    from research.quant import param_bytes
    from research.train.metrics import read_metrics
    from research.train.runs import load_run
    from research.train.tasks import get_task

    loaded = load_run(run.workdir)
    task = get_task(loaded.config.train.task)(loaded.config, loaded.tokenizer)
    batches = task.eval_batches(0, 1)
    sums = jax.jit(task.eval_sums)

    def evaluate(params):
        out = [sums(params, loaded.base, b) for b in batches]
        return sum(float(o["loss_sum"]) for o in out) / sum(float(o["count"]) for o in out)

    curve = {m["step"]: m["loss"] for m in read_metrics(run.workdir) if "loss" in m}  # a resume may repeat steps
    return dict(
        eval_loss_before=evaluate(jax.tree.map(jnp.zeros_like, loaded.params)),  # delta W = 0: the base alone
        eval_loss_after=evaluate(loaded.params),
        train_curve=sorted(curve.items()),
        base_bytes=param_bytes(loaded.base),
        trainable_params=sum(x.size for x in jax.tree.leaves(loaded.params)),
    )


def analyze(workdir, runs, arg=None):
    """The format table on the base run's weights, then the LoRA vs QLoRA comparison."""
    from research.train.runs import load_run
    from research.train.tasks import Task

    new_tokens = SCALES[_arg(arg).scale][9]
    by_stage = {run.stage: run for run in runs}
    loaded = load_run(by_stage["base"].workdir)
    model, params, tokenizer, config = loaded.model, loaded.params, loaded.tokenizer, loaded.config
    config.train.eval_batches = 16  # 16 x batch x seq_len held-out tokens, the same for every format
    eval_batches = Task(config, tokenizer).eval_batches(0, 1)
    rows = measure_formats(model, params, eval_batches, tokenizer, new_tokens)
    finetunes = {}
    for name, stage in (("LoRA (float32 base)", "lora"), ("QLoRA (NF4 base)", "qlora")):
        finetunes[name] = finetune_result(by_stage[stage])
        print(name, {k: v for k, v in finetunes[name].items() if k != "train_curve"}, flush=True)
    write_results(workdir, rows, finetunes, by_stage["lora"].config.train.steps, new_tokens)


def write_results(workdir, rows, finetunes, finetune_steps, new_tokens):
    f32 = rows[0]["weight_bytes"]
    lines = [
        f"| weights | stored MB | vs float32 | weight rel. error | val loss | val perplexity | "
        f"generate tokens/s (8 x {new_tokens}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['format']} | {r['weight_bytes'] / 1e6:.3f} | {r['weight_bytes'] / f32:.2f}x | "
        f"{r['weight_rel_error']:.4f} | {r['eval_loss']:.4f} | {r['eval_perplexity']:.3f} | "
        f"{r['generate_tokens_per_sec']:,.0f} |"
        for r in rows
    ]
    lines += [
        "",
        f"| fine-tuning ({finetune_steps} steps, same LoRA) | base MB | trainable | val loss before | val loss after |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {r['base_bytes'] / 1e6:.3f} | {r['trainable_params']:,} | {r['eval_loss_before']:.4f} | "
        f"{r['eval_loss_after']:.4f} |"
        for name, r in finetunes.items()
    ]
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    (workdir / "results.json").write_text(json.dumps(dict(formats=rows, finetune=finetunes), indent=1))
    print("\n".join(lines))
    _plot(rows, finetunes, workdir / "quantization.png")


def plot_seeds(workdir, merged, arg=None):
    """quantization.png again from the seeds' merged results: perplexity ± std per format, and the
    QLoRA - LoRA loss difference with a ± std band of the per-seed differences."""
    del arg
    _plot(merged["formats"], merged["finetune"], workdir / "quantization.png")


def _paired_difference(a, b) -> tuple[float, float]:
    """(mean, std) over seeds of a - b, paired seed by seed: merged cells list their values in the same seed
    order, so the spread is that of the differences (the batch noise both runs share cancels), not of either."""
    from research.stats import is_summary, mean_err, summarize

    if not (is_summary(a) or is_summary(b)):
        return float(a) - float(b), 0.0
    n = (a if is_summary(a) else b)["n"]
    values_a, values_b = (x["values"] if is_summary(x) else [float(x)] * n for x in (a, b))
    if len(values_a) != len(values_b):  # a seed without one of them: no pairing, independent spreads
        (mean_a, std_a), (mean_b, std_b) = mean_err(a), mean_err(b)
        return mean_a - mean_b, (std_a**2 + std_b**2) ** 0.5
    d = summarize([x - y for x, y in zip(values_a, values_b, strict=True)])
    return d["mean"], d["std"]


def _plot(rows, finetunes, path):
    """Perplexity vs stored bytes, one colour per format, and QLoRA - LoRA train loss per step; one seed's
    results or the seeds' merged ones (± std error bars and band)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no display needed

    from research.stats import mean_err

    colors = {label: f"C{i}" for i, label in enumerate(FORMATS)}
    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    for r in rows:
        mb, mb_err = (v / 1e6 for v in mean_err(r["weight_bytes"]))
        ppl, ppl_err = mean_err(r["eval_perplexity"])
        ax.errorbar(mb, ppl, xerr=mb_err, yerr=ppl_err, fmt="o", capsize=3, color=colors.get(r["format"]))
        ax.annotate(r["format"], (mb, ppl), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("stored weights (MB)")
    ax.set_ylabel("validation perplexity (per token)")
    ax.set_title("Weight-only quantization of one trained LM (bars: ± std over seeds)", fontsize=9)
    # The two runs see the same batches, so their per-step difference cancels the batch noise
    # that dominates either curve alone.
    (lora, qlora), names = finetunes.values(), list(finetunes)
    lora_curve, qlora_curve = dict(lora["train_curve"]), dict(qlora["train_curve"])
    steps = sorted(set(lora_curve) & set(qlora_curve))
    diff = [_paired_difference(qlora_curve[s], lora_curve[s]) for s in steps]
    mean, std = (np.array([d[i] for d in diff]) for i in (0, 1))
    ax2.plot(steps, mean, color="C0", label=f"{names[1]} - {names[0]}")
    ax2.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2, lw=0)
    ax2.axhline(0.0, color="gray", lw=0.5)
    ax2.set_xlabel("fine-tuning step")
    ax2.set_ylabel("train loss difference, same batch\n(nats / response token)")
    ax2.set_title("QLoRA vs LoRA (band: ± std over seeds)", fontsize=9)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
