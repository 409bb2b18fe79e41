r"""Tokenizer trade-offs: vocabulary size vs sequence length vs [UNK] rate vs model quality.

  python -m research.sweep --config experiments/tokenizers.py --workdir workdirs/tokenizers

Every tokenizer kind x vocabulary size trains the same small LM for the same
number of steps on the same rows of seq_len tokens (so the same compute, up to
the embedding and output layers, which grow with the vocabulary). Then, on the
same held-out files, it measures: vocabulary size, tokens per byte (how long
sequences get), the [UNK] rate, and bits per byte (model quality in a unit every
tokenizer shares). Writes results.md, results.json and tokenizers.png.

Arguments: `scale=tiny|full` (tiny: minutes on a 2-core CPU; full: a real LM per
point, for an accelerator), `steps=N` overrides the step count.
"""

import json

from research.config import default_config, parse_arg, swiglu_mlp_dim

SWEEP = {
    "tiny": [
        ("byte", 0),
        ("char", 512),
        ("word", 1024),
        ("word", 4096),
        ("bpe", 512),
        ("bpe", 1024),
        ("bpe", 4096),
        ("wordpiece", 1024),
        ("unigram", 1024),
    ],
    "full": [
        ("byte", 0),
        ("char", 1024),
        ("word", 8192),
        ("word", 32768),
        ("bpe", 1024),
        ("bpe", 8192),
        ("bpe", 32768),
        ("wordpiece", 8192),
        ("unigram", 8192),
    ],
}
SCALES = {
    # layers, d_model, heads, seq_len, batch, steps, tokenizer training bytes, held-out bytes
    "tiny": (2, 128, 4, 128, 16, 300, 1_000_000, 150_000),
    "full": (12, 768, 12, 1024, 128, 20_000, 20_000_000, 2_000_000),
}


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0)
    if arg.scale not in SCALES:
        raise ValueError(f"tokenizers scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, seq_len, batch, steps, train_bytes, _ = SCALES[arg.scale]
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
    c.data.update(seq_len=seq_len, tokenizer_sample_bytes=train_bytes)
    c.train.update(
        steps=steps,
        batch_size=batch,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=max(steps // 10, 1),
        eval_batches=4,
    )
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10))
    return c


def get_sweep(arg=None):
    return [
        {"data.tokenizer": kind, "data.vocab_size": size} if size else {"data.tokenizer": kind}
        for kind, size in SWEEP[_arg(arg).scale]
    ]


def analyze(workdir, runs, arg=None):
    """Measures every run on the same held-out files; writes the table and the plot."""
    from research.data.pipeline import document_texts
    from research.train.bits_per_byte import bits_per_byte
    from research.train.loop import data_spec
    from research.train.runs import load_run

    held_out_bytes = SCALES[_arg(arg).scale][-1]
    rows = []
    for run in runs:
        loaded = load_run(run.workdir)
        model, params, tokenizer, config = loaded.model, loaded.params, loaded.tokenizer, loaded.config
        texts = document_texts(data_spec(config), "eval", max_bytes=held_out_bytes)
        ids = [tokenizer.encode(t) for t in texts]
        num_tokens = sum(len(i) for i in ids)
        num_bytes = sum(len(t.encode("utf-8")) for t in texts)
        unk = sum(int((i == tokenizer.unk_id).sum()) for i in ids)
        # Measured, not assumed: lossy tokenizers (word, wordpiece, ...) drop whitespace or map
        # words to [UNK], so their bits per byte describe less than the whole text.
        lossless = all(tokenizer.decode(i) == t for i, t in zip(ids, texts, strict=True))
        quality = bits_per_byte(model, params, tokenizer, texts, seq_len=config.data.seq_len)
        rows.append(
            {
                "tokenizer": config.data.tokenizer,
                "vocab_size": tokenizer.vocab_size,
                "tokens_per_byte": num_tokens / num_bytes,
                "unk_rate": unk / num_tokens,
                "lossless": lossless,
                "bits_per_byte": quality["bits_per_byte"],
            }
        )
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| tokenizer | vocab | tokens / byte | [UNK] rate | lossless | val bits / byte |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    lines += [
        f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['tokens_per_byte']:.3f} | {r['unk_rate']:.2%} | "
        f"{'yes' if r['lossless'] else 'no'} | {r['bits_per_byte']:.3f} |"
        for r in rows
    ]
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "tokenizers.png")


def plot_seeds(workdir, merged, arg=None):
    """tokenizers.png again from every seed's rows: mean bits per byte with ± std error bars."""
    del arg
    _plot(merged, workdir / "tokenizers.png")


def _plot(rows, path):
    """Bits per byte vs tokens per byte, a line per tokenizer kind; merged rows get ± std error bars."""
    from matplotlib.figure import Figure  # no pyplot: no display needed, caller's backend untouched

    from research.stats import mean_err

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for kind in dict.fromkeys(r["tokenizer"] for r in rows):
        pts = sorted(
            (*mean_err(r["tokens_per_byte"]), *mean_err(r["bits_per_byte"]), r["vocab_size"])
            for r in rows
            if r["tokenizer"] == kind
        )
        x, x_err, y, y_err, vocab = zip(*pts, strict=True)
        ax.errorbar(x, y, xerr=x_err, yerr=y_err, fmt="o-", capsize=3, label=kind)
        for xi, yi, v in zip(x, y, vocab, strict=True):
            ax.annotate(f"{v:,}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("tokens per byte of held-out text")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Tokenizers at equal compute (labels: vocabulary size; bars: ± std over seeds)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
