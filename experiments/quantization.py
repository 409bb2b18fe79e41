r"""Weight-only quantization of a trained LM: float32 / bf16 / int8 / int4 / NF4, and QLoRA vs LoRA.

  python -m experiments.quantization --workdir workdirs/quantization [--arg scale=tiny] [--base_workdir DIR]

1. Pretrains the base LM (get_config; skipped when done, or pass --base_workdir to
   measure a finished run such as the quickstart's).
2. Stores its weights in each format (research.quant: codes packed, scales per
   output channel or per group of 64 input rows, NF4 optionally with double-quantized
   scales; embeddings stay float32) and measures the stored bytes, the validation
   perplexity on the same held-out batches, and greedy generation tokens/s
   (research.decode), all on the same quantized tree the model runs from.
3. Fine-tunes the same LoRA (rank 8 on the attention projections) on a float32 base
   and on the NF4 base (QLoRA), same steps and batches, and compares validation loss.

Writes results.md, results.json and quantization.png in the workdir.
`get_config(arg)` is the base LM's config (arguments: scale=tiny|full, steps=N,
finetune_steps=N).
"""

import argparse
import json
import time

from research.config import default_config, parse_arg, swiglu_mlp_dim

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


def finetune(model, base, lora, train_batches, eval_batches, *, quantized: bool, steps: int):
    """LoRA (or QLoRA on a quantized base) for `steps` Adam steps; returns validation losses before and after."""
    import jax
    import optax

    from research.peft import lora as lora_lib
    from research.quant import quantized_model
    from research.quant.qlora import qlora_params
    from research.train.step import lm_loss_sums

    alpha = LORA["alpha"]
    apply_fn = quantized_model(model).apply if quantized else model.apply
    effective = qlora_params if quantized else lora_lib.apply_lora

    def sums(lora, batch):
        return lm_loss_sums(effective(base, lora, alpha=alpha), apply_fn, batch)

    def loss(lora, batch):
        s, c = sums(lora, batch)
        return s / c

    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, LORA["learning_rate"], steps // 10, steps), 0.9, 0.95)

    @jax.jit
    def step(lora, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(lora, batch)
        updates, opt_state = tx.update(grads, opt_state, lora)
        return optax.apply_updates(lora, updates), opt_state, value

    eval_sums = jax.jit(sums)

    def evaluate(lora):
        out = [eval_sums(lora, b) for b in eval_batches]
        return sum(float(s) for s, _ in out) / sum(float(c) for _, c in out)

    before = evaluate(lora)
    opt_state, curve = tx.init(lora), []
    for _ in range(steps):
        lora, opt_state, value = step(lora, opt_state, next(train_batches))
        curve.append(float(value))
    return dict(eval_loss_before=before, eval_loss_after=evaluate(lora), train_curve=curve)


def run(workdir, arg=None, base_workdir=None):
    import jax
    from etils import epath

    from research.quant import param_bytes
    from research.quant.qlora import init_qlora
    from research.train.loop import train
    from research.train.runs import load_run
    from research.train.tasks import Task

    workdir = epath.Path(workdir)
    parsed = _arg(arg)
    scale = SCALES[parsed.scale]
    finetune_steps, new_tokens = parsed.finetune_steps or scale[8], scale[9]
    if base_workdir is None:
        base_workdir = workdir / "base"
        train(get_config(arg), base_workdir)  # resumes, or does nothing when finished
    loaded = load_run(base_workdir)
    model, params, tokenizer, config = loaded.model, loaded.params, loaded.tokenizer, loaded.config
    config.train.eval_batches = 16  # 16 x batch x seq_len held-out tokens, the same for every format
    eval_batches = Task(config, tokenizer).eval_batches(0, 1)
    rows = measure_formats(model, params, eval_batches, tokenizer, new_tokens)

    # QLoRA vs LoRA: the same factors' init, the same fine-tuning batches (another seed's
    # shuffle of the train split than the pretraining run saw first).
    ft_config = config.copy_and_resolve_references()
    ft_config.train.seed = config.train.seed + 1
    base_q = quantized_tree(params, "nf4 g64 + double quant")
    lora = init_qlora(base_q, target=LORA["target"], rank=LORA["rank"], rng=jax.random.key(0))
    finetunes = {}
    for name, base, quantized in (("LoRA (float32 base)", params, False), ("QLoRA (NF4 base)", base_q, True)):
        batches = Task(ft_config, tokenizer).train_iterator(0, 1)
        result = finetune(model, base, lora, batches, eval_batches, quantized=quantized, steps=finetune_steps)
        result["base_bytes"] = param_bytes(base)
        result["trainable_params"] = sum(x.size for x in jax.tree.leaves(lora))
        finetunes[name] = result
        print(name, {k: v for k, v in result.items() if k != "train_curve"}, flush=True)
    write_results(workdir, rows, finetunes, finetune_steps, new_tokens)


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


def _plot(rows, finetunes, path):
    from matplotlib.figure import Figure  # no pyplot: no display needed

    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    for r in rows:
        ax.plot(r["weight_bytes"] / 1e6, r["eval_perplexity"], "o")
        ax.annotate(r["format"], (r["weight_bytes"] / 1e6, r["eval_perplexity"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("stored weights (MB)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Weight-only quantization of one trained LM")
    # The two runs see the same batches, so their per-step difference cancels the batch noise
    # that dominates either curve alone.
    (lora, qlora), names = finetunes.values(), list(finetunes)
    gap = [q - f for q, f in zip(qlora["train_curve"], lora["train_curve"], strict=True)]
    ax2.plot(range(1, len(gap) + 1), gap, label=f"{names[1]} - {names[0]}")
    ax2.axhline(0.0, color="gray", lw=0.5)
    ax2.set_xlabel("fine-tuning step")
    ax2.set_ylabel("train loss difference (same batch)")
    ax2.set_title("QLoRA vs LoRA")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--arg", default=None, help="scale=tiny|full,steps=N,finetune_steps=N (as after ':' in --config)"
    )
    parser.add_argument("--base_workdir", default=None, help="a finished LM run to quantize instead of pretraining")
    args = parser.parse_args()
    run(args.workdir, args.arg, args.base_workdir)


if __name__ == "__main__":
    main()
