"""Accelerator benchmark: a ~125M-parameter decoder's train step in bfloat16, model FLOPs utilisation.

    python -m research.bench.model_gpu                 # one H100/H200: about 2-4 minutes
    python -m research.bench.model_gpu --dry_run       # CPU, a tiny model: exercises every step
    python -m research.bench.gpu_suite                 # this after research.bench.flash_gpu, within 9 minutes

The model is GPT-2 small's shape (12 layers x 768, 12 heads, learned positions, tied embeddings,
GELU MLP) with a 32k vocabulary: 12*12*768^2 + 32768*768 = 110M matmul parameters (124M with the
position table and norms). Compute is bfloat16 over float32 parameters (model.dtype), as
research.main trains; the step is research.bench.train's, i.e. the training loop's jitted
train_step with AdamW. One row per attention implementation: "flash" (the Pallas kernel of
research_kernels/flash_attention) and "dense" (XLA's fused softmax attention).

MFU = tokens/s x model FLOPs per token / the device's data-sheet bf16 peak
(research.bench.peak.KNOWN_BF16_PEAKS; the measured bf16 matmul peak where the kind is unknown).
Model FLOPs per token: PaLM's 6N + 12LHQT (research.bench.peak.transformer_train_flops_per_token),
so attention's recomputation in flash's backward is not credited and causal masking is not
discounted. Time: the best of --rounds rounds of --steps steps after a compile and a warm-up step.

Status (2026-12): written without access to a GPU; only --dry_run has run (tests/bench/test_model_gpu.py).
Target when a device is lent: MFU >= 50 % with flash attention.
"""

import argparse
import datetime
import json
import math
import platform
import time
import traceback

TARGET_MFU = 0.5


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry_run", action="store_true", help="CPU, a tiny model")
    p.add_argument("--out", default="model_gpu_results.json", help="where the JSON results go")
    p.add_argument("--budget_s", type=float, default=240.0, help="start no new implementation after this long")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 2048)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 16: 32k tokens per step)")
    p.add_argument("--impls", default="flash,dense", help="attention implementations, in order")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    for name in ("seq", "batch", "steps", "rounds"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name}={value} must be >= 1")
    return a


def shape_for(args, devices: int = 1):
    """The benchmark's research.bench.train.Shape for one attention implementation (a function of it).

    devices: how many the batch is split over (the dry run's default batch is one row per device).
    """
    from research.bench.train import Shape

    if args.dry_run:  # flash in Pallas interpret mode: the kernel code itself, at a size a CPU runs
        sizes = dict(layers=2, d_model=64, heads=2, vocab=256, seq=args.seq or 64, batch=args.batch or devices)
        flash_options = (("block_q", 32), ("block_kv", 32), ("interpret", True))
    else:
        sizes = dict(layers=12, d_model=768, heads=12, vocab=32768, seq=args.seq or 2048, batch=args.batch or 16)
        flash_options = ()

    def shape(impl):
        options = flash_options if impl == "flash" else ()
        return Shape(**sizes, attention=impl, dtype="bfloat16", attention_options=options)

    return shape


def peak_flops(device_kind: str, dry_run: bool) -> tuple[float, str]:
    from research.bench.peak import known_peak_flops, measure_matmul_peak_flops

    known = None if dry_run else known_peak_flops(device_kind)
    if known:
        return known, f"data sheet ({device_kind})"
    return measure_matmul_peak_flops("bfloat16", n=256 if dry_run else 8192), "measured bf16 matmul"


def measure(shape, *, steps: int, rounds: int, peak: float) -> dict:
    from research.bench.train import our_train_runner

    t0 = time.perf_counter()
    run = our_train_runner(shape, warmup=1)
    compile_s = time.perf_counter() - t0
    step_s = min(run(steps) / steps for _ in range(rounds))
    tokens_per_sec = shape.tokens / step_s
    return dict(
        compile_and_warmup_s=round(compile_s, 1),
        step_s=step_s,
        tokens_per_sec=tokens_per_sec,
        mfu=tokens_per_sec * shape.flops_per_token() / peak,
    )


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.dry_run:
        jax.config.update("jax_platforms", "cpu")
    start = time.perf_counter()
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    print(f"jax {jax.__version__} on {jax.default_backend()}: {kind} x {jax.device_count()}", flush=True)
    if jax.default_backend() == "cpu" and not args.dry_run:
        print("no accelerator: pass --dry_run to exercise the script on CPU")
        return 1
    shape = shape_for(args, jax.device_count())
    peak, peak_source = peak_flops(kind, args.dry_run)
    steps = args.steps or (1 if args.dry_run else 5)
    params = _matmul_params(shape("dense"))
    results = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        jax_version=jax.__version__,
        python=platform.python_version(),
        device=kind,
        devices=jax.device_count(),
        dry_run=args.dry_run,
        peak_flops=peak,
        peak_source=peak_source,
        matmul_params=params,
        target_mfu=TARGET_MFU,
        rows=[],
    )
    print(f"{params / 1e6:.0f}M matmul parameters; peak {peak / 1e12:.1f} TFLOP/s ({peak_source})", flush=True)
    for impl in args.impls.split(","):
        s = shape(impl)
        row = dict(impl=impl, seq=s.seq, batch=s.batch, dtype=s.dtype)
        if time.perf_counter() - start > args.budget_s:
            row["error"] = "skipped: time budget"
        else:
            try:
                s.check()
                row.update(measure(s, steps=steps, rounds=args.rounds, peak=peak))
            except Exception as e:  # one implementation failing must not lose the others' numbers
                traceback.print_exc()
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        results["rows"].append(row)
        print("  " + json.dumps(row), flush=True)
        _save(results, args.out)  # a run killed from outside still leaves what it measured
    results["elapsed_s"] = round(time.perf_counter() - start, 1)
    _save(results, args.out)
    print_summary(results)
    return 0 if all("error" not in r for r in results["rows"]) else 2


def _matmul_params(shape) -> int:
    """12 L d^2 + V d: the N of the FLOP count (research.bench.peak)."""
    return 12 * shape.layers * shape.d_model**2 + shape.vocab * shape.d_model


def _save(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def print_summary(results):
    print(f"{'impl':>6} {'seq':>6} {'batch':>6} {'step ms':>9} {'tokens/s':>10} {'MFU':>6}")
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['impl']:>6} {r['seq']:>6} {r['batch']:>6}  {r['error'][:60]}")
            continue
        mfu = r["mfu"]
        flag = "" if math.isnan(mfu) or mfu >= TARGET_MFU or results["dry_run"] else "  (below the 50 % target)"
        print(f"{r['impl']:>6} {r['seq']:>6} {r['batch']:>6} {1e3 * r['step_s']:>9.1f} {r['tokens_per_sec']:>10,.0f} "
              f"{100 * mfu:>5.1f}%{flag}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
