r"""Training throughput: our jit'd train step vs Hugging Face's PyTorch GPT-2, same shape, same run.

  python -m research.bench.train --layers 6 --d_model 384 --heads 6 --vocab 4096 --seq 256 --batch 16
  python -m research.bench.train --sweep_d_model 128,256,384,512,768       # width scaling
  python -m research.bench.train --sweep_seq 128,256,512,1024,2048         # length scaling

Both implementations are built and warmed up first, then timed in interleaved rounds (ours
--steps steps, the peer --steps steps, the float32 matmul peak, repeated --rounds times), so a
slow stretch of a shared machine hits both alike. Reported: each side's best round (tokens/s),
the median over rounds of the per-round ratio (speedup_vs_peer), and peak_fraction = best
tokens/s x model FLOPs per token (research.bench.peak, PaLM's 6N + 12LHQT) / the best matmul
peak of the run.

Sweeps vary one size from the shape flags and print tokens/s and peak fraction per point, then
the fitted log-log slope of step time vs that size. A width sweep keeps the head dim
(--d_model / --heads), batch and seq; a length sweep keeps the tokens per step
(--batch x --seq; batch = tokens / seq, at least 1), so its slope is that of time per token:
0 for a cost linear in tokens, growing towards 1 as attention's quadratic term takes over.

Last line: one JSON object.
"""

import dataclasses
import functools
import statistics
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
flags.DEFINE_integer("steps", 2, "Timed steps per round, each side.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (ours, peer, matmul peak).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
flags.DEFINE_list("sweep_d_model", [], "Widths to sweep (comma-separated); keeps the head dim, batch and seq.")
flags.DEFINE_list("sweep_seq", [], "Sequence lengths to sweep (comma-separated); keeps batch x seq tokens.")


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    heads: int
    vocab: int
    seq: int
    batch: int
    attention: str = "dense"
    dtype: str = "float32"
    attention_options: tuple = ()  # ((name, value), ...), as ModelConfig takes them

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def flops_per_token(self) -> float:
        return transformer_train_flops_per_token(self.layers, self.d_model, self.vocab, self.seq)

    def check(self, seq_flag: str = "--seq") -> None:
        common.check_shape(
            layers=self.layers,
            d_model=self.d_model,
            heads=self.heads,
            vocab=self.vocab,
            seq_len=self.seq,
            attention=self.attention,
            dtype=self.dtype,
            seq_flag=seq_flag,
            attention_opts=dict(self.attention_options) or None,
        )
        if self.batch < 1:
            raise ValueError(f"--batch={self.batch} must be >= 1")

    def short(self) -> dict:
        return dict(
            layers=self.layers, d_model=self.d_model, heads=self.heads, vocab=self.vocab, seq=self.seq, batch=self.batch
        )


def our_train_runner(shape: Shape, warmup: int = 1):
    """`run(steps) -> seconds` of our jitted train step (as research.train.loop builds it), compiled and warmed up."""
    model = common.gpt2_like_model(
        shape.seq,
        layers=shape.layers,
        d_model=shape.d_model,
        heads=shape.heads,
        vocab=shape.vocab,
        attention=shape.attention,
        dtype=shape.dtype,
        attention_options=shape.attention_options,
    )
    optim = default_config().optim
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        state, shardings = create_train_state(model, make_optimizer(optim, 1000), mesh, jax.random.key(0))
        step = jax.jit(
            functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=learning_rate_schedule(optim, 1000)),
            in_shardings=(shardings, batch_sharding(mesh)),
            donate_argnums=0,
        )
        tokens = jax.random.randint(jax.random.key(1), (shape.batch, shape.seq), 0, shape.vocab)
        batch = jax.device_put(
            {
                "tokens": tokens,
                "segment_ids": jnp.ones_like(tokens),
                "positions": jnp.broadcast_to(jnp.arange(shape.seq), tokens.shape),
            },
            batch_sharding(mesh),
        )
        compiled = step.lower(state, batch).compile()  # callable outside the mesh context
    box = [state]

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            box[0], metrics = compiled(box[0], batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    run(warmup)
    return run


def peer_train_runner(shape: Shape, warmup: int = 1):
    """The Hugging Face peer's runner, or None (with a note) when it is off or not installed."""
    from research.bench import hf_peer

    if shape.dtype != "float32" or shape.attention != "dense":
        print(f"peer skipped: it runs float32 dense attention, not {shape.dtype} {shape.attention}")
        return None
    return common.peer_or_none(hf_peer.hf_train_runner, **shape.short(), warmup=warmup)


def measure(shape: Shape, *, steps: int, rounds: int, warmup: int = 1, peer: bool = True, verbose: bool = True):
    """Interleaved rounds of ours, the peer and the matmul peak at one shape -> a record."""
    ours = our_train_runner(shape, warmup)
    theirs = peer_train_runner(shape, warmup) if peer else None
    ours_s, peer_s, peaks = [], [], []
    for r in range(rounds):
        ours_s.append(ours(steps) / steps)
        if theirs:
            peer_s.append(theirs(steps) / steps)
        peaks.append(measure_matmul_peak_flops("float32", repeats=3))
        if verbose:
            line = f"  round {r + 1}/{rounds}: ours {ours_s[-1]:.3f} s/step"
            if theirs:
                line += f", peer {peer_s[-1]:.3f} s/step, ratio {peer_s[-1] / ours_s[-1]:.3f}"
            print(line + f", matmul peak {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    peak = max(peaks)
    tps = shape.tokens / min(ours_s)
    rec = dict(
        shape=shape.short(),
        step_s=min(ours_s),
        tokens_per_sec=tps,
        peak_fraction=tps * shape.flops_per_token() / peak,
        peak_flops=peak,
        peer_tokens_per_sec=None,
        peer_peak_fraction=None,
        speedup_vs_peer=None,
        round_ratios=None,
    )
    if peer_s:
        ratios = [p / o for o, p in zip(ours_s, peer_s, strict=True)]  # ours tokens/s over the peer's
        ptps = shape.tokens / min(peer_s)
        rec.update(
            peer_tokens_per_sec=ptps,
            peer_peak_fraction=ptps * shape.flops_per_token() / peak,
            speedup_vs_peer=statistics.median(ratios),
            round_ratios=[round(x, 4) for x in ratios],
        )
    return rec


def sweep_shapes(base: Shape, axis: str, values) -> list[Shape]:
    """The shapes of a sweep over `axis` ("d_model" or "seq"); raises ValueError naming the sweep flag."""
    flag = f"--sweep_{axis}"
    values = [int(v) for v in values]
    if axis == "d_model":
        head_dim = base.d_model // base.heads
        shapes = []
        for d in values:
            if d < 1 or d % head_dim:
                raise ValueError(
                    f"{flag} value {d} is not a positive multiple of the head dim {head_dim} (--d_model / --heads), "
                    "which a width sweep keeps"
                )
            shapes.append(dataclasses.replace(base, d_model=d, heads=d // head_dim))
    elif axis == "seq":
        shapes = [dataclasses.replace(base, seq=s, batch=max(1, base.tokens // max(s, 1))) for s in values]
    else:
        raise ValueError(f"sweep axis {axis!r}; choose d_model or seq")
    for s in shapes:
        s.check(seq_flag=flag if axis == "seq" else "--seq")
    return shapes


def sweep(base: Shape, axis: str, values, *, steps: int, rounds: int, warmup: int = 1, peer: bool = True) -> dict:
    """tokens/s and peak fraction per point, and the fitted log-log slope of step time vs the size."""
    shapes = sweep_shapes(base, axis, values)  # every point is checked before anything compiles
    points = []
    for s in shapes:
        print(f"== {axis}={getattr(s, axis)}: {s.short()}", flush=True)
        points.append(measure(s, steps=steps, rounds=rounds, warmup=warmup, peer=peer, verbose=False))
    sizes = [getattr(s, axis) for s in shapes]
    # Step time at the base's tokens per step (a length sweep's batch rounds; a width sweep's doesn't change).
    norm = [p["step_s"] * base.tokens / s.tokens for p, s in zip(points, shapes, strict=True)]
    out = dict(sweep=axis, sizes=sizes, points=points, slope=common.fit_slope(sizes, norm))
    if all(p["peer_tokens_per_sec"] for p in points):
        out["peer_slope"] = common.fit_slope(sizes, [base.tokens / p["peer_tokens_per_sec"] for p in points])
    return out


def print_sweep(result: dict) -> None:
    axis = result["sweep"]
    rows = []
    for size, p in zip(result["sizes"], result["points"], strict=True):
        row = {
            axis: size,
            "batch": p["shape"]["batch"],
            "step s": p["step_s"],
            "tokens/s": p["tokens_per_sec"],
            "% of peak": 100 * p["peak_fraction"],
        }
        if p["peer_tokens_per_sec"]:
            row.update(
                {
                    "peer tokens/s": p["peer_tokens_per_sec"],
                    "peer % of peak": 100 * p["peer_peak_fraction"],
                    "ratio": f"{p['speedup_vs_peer']:.2f}x",
                }
            )
        rows.append(row)
    common.print_table(rows)
    line = f"fitted log-log slope of step time vs {axis}: ours {result['slope']:.2f}"
    if "peer_slope" in result:
        line += f", peer {result['peer_slope']:.2f}"
    print(line)


def shape_from_flags() -> Shape:
    f = flags.FLAGS
    return Shape(
        layers=f.layers,
        d_model=f.d_model,
        heads=f.heads,
        vocab=f.vocab,
        seq=f.seq,
        batch=f.batch,
        attention=f.attention,
        dtype=f.dtype,
    )


def main(argv):
    del argv
    f = flags.FLAGS
    for name in ("steps", "rounds"):
        if getattr(f, name) < 1:
            raise app.UsageError(f"--{name}={getattr(f, name)} must be >= 1")
    if f.sweep_d_model and f.sweep_seq:
        raise app.UsageError("--sweep_d_model and --sweep_seq: one sweep at a time")
    base = shape_from_flags()
    try:
        common.check_shape_flags(f.seq)
        base.check()
        shapes = [base]
        if f.sweep_d_model or f.sweep_seq:
            axis, values = ("d_model", f.sweep_d_model) if f.sweep_d_model else ("seq", f.sweep_seq)
            shapes = sweep_shapes(base, axis, values)
        for s in shapes:  # the batch is split over every device (data parallel)
            if s.batch % jax.device_count():
                where = "" if s is base else f" (the sweep's point {s.short()} has batch {s.batch})"
                raise ValueError(f"--batch={f.batch}: the batch must divide over {jax.device_count()} devices{where}")
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    if f.sweep_d_model or f.sweep_seq:
        result = sweep(base, axis, values, steps=f.steps, rounds=f.rounds, warmup=f.warmup, peer=f.peer)
        print(
            f"devices: {device}; float32 matmul peak {max(p['peak_flops'] for p in result['points']) / 1e9:.1f} "
            "GFLOP/s (best of each point's rounds)"
        )
        print_sweep(result)
        common.print_json(result)
        return
    rec = measure(base, steps=f.steps, rounds=f.rounds, warmup=f.warmup, peer=f.peer)
    rows = [
        {"impl": "research (jax)", "tokens/s": rec["tokens_per_sec"], "% of matmul peak": 100 * rec["peak_fraction"]}
    ]
    if rec["peer_tokens_per_sec"]:
        rows.append(
            {
                "impl": "hf gpt2 (torch)",
                "tokens/s": rec["peer_tokens_per_sec"],
                "% of matmul peak": 100 * rec["peer_peak_fraction"],
            }
        )
    print(f"devices: {device}; float32 matmul peak {rec['peak_flops'] / 1e9:.1f} GFLOP/s (best of {f.rounds} rounds)")
    common.print_table(rows)
    if rec["speedup_vs_peer"]:
        print(
            f"ours / peer: {rec['speedup_vs_peer']:.3f}x "
            f"(median of {f.rounds} interleaved rounds: {rec['round_ratios']})"
        )
    common.print_json(rec)


if __name__ == "__main__":
    app.run(main)
