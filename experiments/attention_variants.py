r"""Attention variants ablation: the same small LM and budget per variant, on text and on long-range recall.

  python -m research.sweep --config experiments/attention_variants.py --workdir workdirs/attention_variants

Every variant trains the same model (same init seed, data order, steps) twice:
  * language modelling on the Python stdlib corpus: validation loss, training
    tokens/s, and the compiled forward+backward temp memory of the model at the
    training batch shape (XLA's memory_analysis; optimizer state excluded);
  * `key_recall` (research/data/key_recall.py): the row's last letter repeats a
    key placed >= 7/8 of the row back. Scored as next-token accuracy at the answer
    on the 512 validation rows; chance is 1/26. Local-only attention (sliding,
    window * layers far shorter than the distance) cannot do better than chance;
    dense, blockwise, global tokens (block_sparse) and performer can in one hop.
    Strided needs two (key -> its chunk's summary -> the query) and, measured at
    tiny scale, does not learn that route in the step budget.
Writes results.md, results.json and attention_variants.png in the workdir.

Not in the sweep: linformer (non-causal; the decoder LM is causal, it raises),
and flash on CPU (it falls back to blockwise: the same function, same numbers);
`scale=full` adds flash for an accelerator.

Arguments: `scale=tiny|full` (tiny: minutes on a 2-core CPU), `steps=N` overrides the step count.
"""

import json

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.data import key_recall  # noqa: F401  (registers the `key_recall` builder with TFDS)

VARIANTS = {
    "tiny": ["dense", "blockwise", "sliding", "block_sparse", "strided", "performer"],
    "full": ["dense", "blockwise", "flash", "sliding", "block_sparse", "strided", "performer"],
}
SCALES = {
    # layers, d_model, heads, kv_heads, seq_len, batch, steps, learning rate, block (window, block, stride)
    "tiny": (2, 64, 4, 2, 128, 16, 300, 3e-3, 16),
    "full": (6, 384, 6, 2, 1024, 32, 5_000, 1e-3, 128),
}
# task -> data overrides; the recall rows are shorter (cheaper) but still far beyond a local window's reach.
TASKS = {
    "lm": lambda seq_len: {"data.name": "python_stdlib", "data.seq_len": seq_len},
    "recall": lambda seq_len: {"data.name": f"key_recall/len{seq_len // 2}", "data.seq_len": seq_len // 2},
}


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0)
    if arg.scale not in SCALES:
        raise ValueError(f"attention_variants scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, kv_heads, seq_len, batch, steps, lr, block = SCALES[arg.scale]
    steps = arg.steps or steps
    c = default_config()
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=kv_heads,
        position="rope",
        norm="rmsnorm",
        ffn="swiglu",
        mlp_dim=swiglu_mlp_dim(d_model),
    )
    c.model.attention_options.update(
        block_size=block,
        window=block,
        num_global=1,
        stride=block,
        num_features=4 * block,
        block_q=block,
        block_kv=block,
    )
    c.data.update(seq_len=seq_len, tokenizer="byte")
    c.train.update(
        steps=steps,
        batch_size=batch,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=max(steps // 10, 1),
        eval_batches=8,
    )
    c.optim.update(learning_rate=lr, warmup_steps=min(50, steps // 10))
    return c


def get_sweep(arg=None):
    arg = _arg(arg)
    seq_len = SCALES[arg.scale][4]
    return [
        {"model.attention": name, **overrides(seq_len)} for overrides in TASKS.values() for name in VARIANTS[arg.scale]
    ]


def recall_accuracy(model, params, config, tokenizer, batch_size=64) -> float:
    """Next-token accuracy at the answer of every validation row of key_recall."""
    import jax
    import numpy as np

    from research.data.pipeline import document_texts
    from research.train.loop import data_spec

    seq_len = config.data.seq_len
    texts = document_texts(data_spec(config), "eval")
    tokens = np.stack([tokenizer.encode(t, add_eos=True) for t in texts])  # [n, seq_len]
    if tokens.shape[1] != seq_len:
        raise ValueError(f"key_recall rows are {tokens.shape[1]} tokens, data.seq_len={seq_len}")
    answer = key_recall.answer_index(seq_len)
    predict = jax.jit(lambda p, t: model.apply({"params": p}, t)[:, answer - 1].argmax(-1))
    hits = 0
    for i in range(0, len(tokens), batch_size):
        rows = tokens[i : i + batch_size]
        hits += int((np.asarray(predict(params, rows)) == rows[:, answer]).sum())
    return hits / len(tokens)


def train_memory_bytes(model, params, config) -> int:
    """Compiled temp bytes of the LM loss's forward+backward at the training batch shape."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss(p, tokens):
        logits = model.apply({"params": p}, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), jnp.int32)
    compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def analyze(workdir, runs, arg=None):
    """One row per variant: LM quality, speed and memory, and recall accuracy."""
    from research.train.metrics import read_metrics
    from research.train.runs import load_run

    rows = {}
    for run in runs:
        loaded = load_run(run.workdir)
        model, params, tokenizer, config = loaded.model, loaded.params, loaded.tokenizer, loaded.config
        metrics = read_metrics(run.workdir)
        speeds = [m["tokens_per_sec"] for m in metrics if m.get("tokens_per_sec")]
        eval_loss = [m["eval_loss"] for m in metrics if "eval_loss" in m][-1]
        row = rows.setdefault(config.model.attention, {"variant": config.model.attention})
        if config.data.name.startswith("key_recall"):
            row.update(recall_loss=eval_loss, recall_accuracy=recall_accuracy(model, params, config, tokenizer))
        else:
            row.update(
                lm_loss=eval_loss,
                tokens_per_sec=sum(speeds) / len(speeds),
                temp_mib=train_memory_bytes(model, params, config) / 2**20,
            )
    rows = list(rows.values())
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| attention | LM val loss | LM tokens/s | fwd+bwd temp MiB | recall val loss | recall accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {r.get('lm_loss', float('nan')):.3f} | {r.get('tokens_per_sec', float('nan')):,.0f} | "
        f"{r.get('temp_mib', float('nan')):.1f} | {r.get('recall_loss', float('nan')):.3f} | "
        f"{r.get('recall_accuracy', float('nan')):.1%} |"
        for r in rows
    ]
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "attention_variants.png")


def plot_seeds(workdir, merged, arg=None):
    """attention_variants.png again from every seed's rows: mean per variant with ± std error bars."""
    del arg
    _plot(merged, workdir / "attention_variants.png")


def _plot(rows, path):
    """A bar per variant (its own colour in every panel) for LM loss, speed and recall; merged rows get ± std bars."""
    from matplotlib.figure import Figure  # no pyplot: no display needed, caller's backend untouched

    from research.stats import mean_err

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3)
    names = [r["variant"] for r in rows]
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    panels = [
        ("lm_loss", "LM validation loss", "nats per byte"),
        ("tokens_per_sec", "LM training throughput", "tokens / s"),
        ("recall_accuracy", "key recall accuracy", "fraction of answers right"),
    ]
    for ax, (key, title, unit) in zip(axes, panels, strict=True):
        mean, err = zip(*(mean_err(r.get(key, float("nan"))) for r in rows), strict=True)
        ax.bar(names, mean, yerr=err, capsize=3, color=[colors[n] for n in names])
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes[2].axhline(1 / 26, color="k", linestyle="--", label="chance (1/26)")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=8)
    fig.suptitle("Attention variants at equal budget (bars: ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
