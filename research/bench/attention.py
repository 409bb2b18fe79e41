r"""Attention variants: forward+backward time and peak memory vs sequence length.

  python -m research.bench.attention                       # 1k -> 32k, batch 1, 4 heads, head dim 64
  python -m research.bench.attention --lengths 1024,4096 --variants dense,sliding --out /tmp/a.png

For each variant and length: jit(grad of sum(attend(q, k, v) * w)) w.r.t. q, k, v
(forward + backward), compiled once, run once to warm up, then the best of
--repeats timed runs (best, not mean: interference from other processes only
ever slows a run down). Memory is XLA's own figure for the compiled program:
`memory_analysis().temp_size_in_bytes`, the peak of the temporary buffers the
forward+backward allocates, excluding inputs and outputs (q, k, v, their
gradients: 6 * batch * len * heads * head_dim * 4 bytes more). It is read before
running, so a program over --mem_cap_gib is skipped without allocating it. A
variant stops growing once its predicted time at the next length (from the
log-log slope so far) exceeds --time_cap_s; skipped lengths say so.

Variants run causal, as a decoder uses them, except linformer (non-causal only).
The last line is one JSON object: {variant: {"slope": fitted log-log slope of time
vs length, "peak_bytes": temp bytes at the longest length run, "longest": that length}}.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from research.attention import get_attention, list_attention
from research.bench import common

flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"], "Sequence lengths.")
flags.DEFINE_list(
    "variants",
    ["dense", "blockwise", "sliding", "block_sparse", "strided", "linformer", "performer"],
    "Registered attention names.",
)
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("head_dim", 64, "Head dimension.")
flags.DEFINE_integer("kv_heads", 0, "Key/value heads (0: --heads, i.e. MHA).")
flags.DEFINE_integer("repeats", 3, "Timed runs per point; the best is reported.")
flags.DEFINE_float("time_cap_s", 20.0, "Skip a variant's longer lengths once one run would take longer than this.")
flags.DEFINE_float("mem_cap_gib", 6.0, "Skip points whose compiled temporary memory exceeds this.")
flags.DEFINE_string("out", "docs/attention_scaling.png", "Where to save the log-log plot.")
flags.FLAGS.set_default("heads", 4)

# The knobs each variant runs with: windows and blocks fixed as the length grows.
OPTIONS = dict(block_size=128, window=256, num_global=1, stride=128, rank=256, num_features=256)


def _grad_fn(name):
    attend = get_attention(name, OPTIONS)
    causal = name != "linformer"

    def loss(q, k, v, w):
        return jnp.sum(attend(q, k, v, causal=causal).astype(jnp.float32) * w)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(name, length, f):
    """(seconds, temp bytes) or (None, temp bytes) when over the memory cap."""
    heads, kv_heads = f.heads, f.kv_heads or f.heads
    keys = jax.random.split(jax.random.key(length), 4)
    q = jax.random.normal(keys[0], (f.batch, length, heads, f.head_dim), f.dtype)
    k = jax.random.normal(keys[1], (f.batch, length, kv_heads, f.head_dim), f.dtype)
    v = jax.random.normal(keys[2], (f.batch, length, kv_heads, f.head_dim), f.dtype)
    w = jax.random.normal(keys[3], q.shape, jnp.float32)
    compiled = _grad_fn(name).lower(q, k, v, w).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if temp > f.mem_cap_gib * 2**30:
        return None, temp
    jax.block_until_ready(compiled(q, k, v, w))
    best = math.inf
    for _ in range(f.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, w))
        best = min(best, time.perf_counter() - start)
    return best, temp


def fit_slope(points):
    """Least-squares slope of log(time) vs log(length) over [(length, seconds), ...]."""
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main(argv):
    del argv
    f = flags.FLAGS
    lengths = sorted(int(n) for n in f.lengths)
    unknown = sorted(set(f.variants) - set(list_attention()))
    if unknown:
        raise app.UsageError(f"--variants {unknown} not registered; choose from {list_attention()}")
    rows, results = [], {}
    for name in f.variants:
        points, last_temp, last_len, note = [], None, None, ""
        for n in lengths:
            if note:
                rows.append({"variant": name, "length": n, "fwd+bwd ms": "-", "temp MiB": "-", "note": note})
                continue
            seconds, temp = measure(name, n, f)
            if seconds is None:
                note = f"skipped: > {f.mem_cap_gib:g} GiB"
                rows.append({"variant": name, "length": n, "fwd+bwd ms": "-", "temp MiB": temp / 2**20, "note": note})
                continue
            rows.append(
                {"variant": name, "length": n, "fwd+bwd ms": 1e3 * seconds, "temp MiB": temp / 2**20, "note": ""}
            )
            print(f"{name:>12} {n:>6}: {1e3 * seconds:10.1f} ms  {temp / 2**20:10.1f} MiB temp", flush=True)
            points.append((n, seconds))
            last_temp, last_len = temp, n
            # Predicted next time from the slope so far, clipped to [1, 2.2]: one noisy point
            # (other processes share the cores) must not stop a variant early.
            slope = min(max(fit_slope(points) or 2.0, 1.0), 2.2)
            if seconds * 2**slope > f.time_cap_s:
                note = f"skipped: > {f.time_cap_s:g} s predicted"
        results[name] = {"slope": fit_slope(points), "peak_bytes": last_temp, "longest": last_len}
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(
        f"devices: {device}; batch {f.batch}, heads {f.heads}, kv heads {f.kv_heads or f.heads},"
        f" head dim {f.head_dim}, {f.dtype}; options {OPTIONS}"
    )
    common.print_table(rows)
    print("slopes (log-log, time vs length): " + ", ".join(f"{k} {v['slope']:.2f}" for k, v in results.items()))
    _plot(rows, f.out)
    common.print_json(results)


def _plot(rows, path):
    import os

    from matplotlib.figure import Figure  # no pyplot: no display needed

    fig = Figure(figsize=(11, 4))
    ax_t, ax_m = fig.subplots(1, 2)
    for name in dict.fromkeys(r["variant"] for r in rows):
        ran = [r for r in rows if r["variant"] == name and r["note"] == ""]
        if ran:
            ax_t.plot([r["length"] for r in ran], [r["fwd+bwd ms"] for r in ran], "o-", label=name)
            ax_m.plot([r["length"] for r in ran], [r["temp MiB"] for r in ran], "o-", label=name)
    for ax, label in ((ax_t, "forward+backward time (ms)"), (ax_m, "compiled temp memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle("Attention variants on CPU (log-log): slope 2 = quadratic, 1 = linear")
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    app.run(main)
