r"""Quickstart: a small GPT-style byte-level LM on the Python standard library.

  python -m research.main --config experiments/quickstart.py --workdir /tmp/quickstart

Tiny by default (a few minutes on 2 CPU cores). Arguments after ':':
  size=tiny|small|base   model and batch scale (tiny for CPU, base for one GPU/TPU host)
  steps=N                overrides the size's step count
e.g. --config experiments/quickstart.py:size=base,steps=20000
"""

from research.config import default_config, parse_arg, swiglu_mlp_dim

SIZES = {
    # num_layers, d_model, num_heads, num_kv_heads, seq_len, batch_size, steps, learning_rate
    "tiny": (4, 128, 4, 2, 128, 32, 500, 2e-3),
    "small": (6, 384, 6, 2, 256, 32, 5_000, 1e-3),
    "base": (12, 768, 12, 4, 1024, 128, 50_000, 6e-4),
}


def get_config(arg=None):
    arg = parse_arg(arg, size="tiny", steps=0)
    if arg.size not in SIZES:
        raise ValueError(f"quickstart size={arg.size!r}; choose one of {sorted(SIZES)}")
    layers, d_model, heads, kv_heads, seq_len, batch, steps, lr = SIZES[arg.size]
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
        steps=arg.steps or steps,
        batch_size=batch,
        eval_every=max((arg.steps or steps) // 4, 1),
        checkpoint_every=max((arg.steps or steps) // 2, 1),
        eval_batches=4,
        log_every=25,
    )
    c.optim.update(learning_rate=lr, warmup_steps=min(100, (arg.steps or steps) // 10))
    c.sample.update(num_samples=3, max_new_tokens=seq_len // 2)
    return c
