r"""Training throughput: our jit'd train step vs Hugging Face's PyTorch GPT-2, same shape, same run.

  python -m research.bench.train --layers 6 --d_model 384 --heads 6 --vocab 4096 --seq 256 --batch 16

Last line: one JSON object with tokens_per_sec, peak_fraction (of this
machine's float32 matmul peak, measured in this process) and the peer's figures.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from research.bench import common
from research.bench.peak import measure_matmul_peak_flops, transformer_train_flops_per_token
from research.config import default_config
from research.train.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from research.train.state import create_train_state, learning_rate_schedule, make_optimizer
from research.train.step import train_step

flags.DEFINE_integer("seq", 256, "Sequence length.")
flags.DEFINE_integer("batch", 16, "Global batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")


def our_tokens_per_sec() -> float:
    f = flags.FLAGS
    model = common.gpt2_like_model(f.seq)
    optim = default_config().optim
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        state, shardings = create_train_state(model, make_optimizer(optim, 1000), mesh, jax.random.key(0))
        step = jax.jit(
            functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=learning_rate_schedule(optim, 1000)),
            in_shardings=(shardings, batch_sharding(mesh)),
            donate_argnums=0,
        )
        tokens = jax.random.randint(jax.random.key(1), (f.batch, f.seq), 0, f.vocab)
        batch = jax.device_put(
            {
                "tokens": tokens,
                "segment_ids": jnp.ones_like(tokens),
                "positions": jnp.broadcast_to(jnp.arange(f.seq), tokens.shape),
            },
            batch_sharding(mesh),
        )
        for _ in range(1 + f.warmup):  # the first call compiles
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(f.steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        return f.batch * f.seq * f.steps / (time.perf_counter() - start)


def main(argv):
    del argv
    from research.bench import hf_peer

    f = flags.FLAGS
    peak = measure_matmul_peak_flops("float32")
    flops_per_token = transformer_train_flops_per_token(f.layers, f.d_model, f.vocab, f.seq)
    ours = our_tokens_per_sec()
    peer = common.peer_or_none(
        hf_peer.hf_train_tokens_per_sec,
        layers=f.layers,
        d_model=f.d_model,
        heads=f.heads,
        vocab=f.vocab,
        seq=f.seq,
        batch=f.batch,
        steps=max(3, f.steps // 2),
    )
    rows = [{"impl": "research (jax)", "tokens/s": ours, "% of matmul peak": 100 * ours * flops_per_token / peak}]
    if peer:
        rows.append(
            {"impl": "hf gpt2 (torch)", "tokens/s": peer, "% of matmul peak": 100 * peer * flops_per_token / peak}
        )
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"devices: {device}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    common.print_table(rows)
    common.print_json(
        {
            "tokens_per_sec": ours,
            "peak_fraction": ours * flops_per_token / peak,
            "peak_flops": peak,
            "peer_tokens_per_sec": peer,
            "speedup_vs_peer": ours / peer if peer else None,
            "shape": dict(layers=f.layers, d_model=f.d_model, heads=f.heads, vocab=f.vocab, seq=f.seq, batch=f.batch),
        }
    )


if __name__ == "__main__":
    app.run(main)
