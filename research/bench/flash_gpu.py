"""GPU benchmark: our Pallas flash attention vs jax.nn.dot_product_attention (XLA and cuDNN).

    python -m research.bench.flash_gpu              # one H100: about 5-9 minutes, stops itself at --budget_s
    python -m research.bench.flash_gpu --dry_run    # CPU, Pallas interpret mode, tiny sizes: exercises every step

Steps, each guarded so one failure is recorded and the rest still run:
1. Correctness: research_kernels.flash_attention.gpu vs research.attention.dense_attention (float32, highest matmul
   precision) for outputs and dq/dk/dv, float32 (the kernel's matmuls use TF32, as XLA's default does) and
   bfloat16, causal and not, GQA, one case with packed segment ids. Metric: max |got - ref| / max |ref|.
2. Tuning: a few Triton tile / warp / stage settings for forward and for backward at seq 4k, per head dim;
   the fastest is used below (the defaults if every candidate fails).
3. Timing, bfloat16, MHA, 16k tokens per batch (batch = 16384 / seq) and 2048 model width
   (heads = 2048 / head_dim): the FlashAttention-2/3 papers' setup. Head dim 64 and 128, seq 2k-16k,
   causal and not. Forward and forward+backward (jax.vjp, cotangent given) of pallas / cudnn / xla.

FLOPs (the FlashAttention papers' convention, the same for every implementation):
    forward          = 4 * batch * heads * seq^2 * head_dim      (QK^T and PV, 2 FLOPs per multiply-add)
    causal           = half of that
    forward+backward = 3.5 x forward                              (backward = 5 matmuls = 2.5 x forward)
so work an implementation redoes (our backward recomputes QK^T) is not credited.
Time: after a compile + warm-up call, n back-to-back calls (n sized for ~50 ms), best of 3 trials.

Output: progress lines, the JSON written to --out, and a short table last.
Status (2026-11): written without access to a GPU; only --dry_run has been run (tests/kernels). The kernels'
Triton lowering is checked on CPU by cross-platform lowering, but Triton compilation, speed and the
targets (forward >= 450 TFLOP/s at hd 128 / seq 8k, forward+backward >= cuDNN) are unmeasured.

Runs standalone on any machine with jax[cuda] (no flax needed: it falls back to a local dense reference
if research.attention can't be imported).
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback

TARGET_FWD_TFLOPS = 450.0  # issue 5: forward at head dim 128, seq 8k (FlashAttention-3 publishes ~640)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry_run", action="store_true", help="CPU, interpret mode, tiny sizes")
    p.add_argument("--out", default="flash_gpu_results.json", help="where the JSON results go")
    p.add_argument("--budget_s", type=float, default=540.0, help="stop starting new timings after this long")
    p.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 2048,4096,8192,16384)")
    p.add_argument("--head_dims", default=None, help="comma-separated head dims (default 128,64)")
    p.add_argument("--tokens", type=int, default=None, help="batch * seq (default 16384)")
    p.add_argument("--width", type=int, default=None, help="heads * head_dim (default 2048)")
    p.add_argument("--no_tune", action="store_true", help="skip step 2 and use the kernel defaults")
    p.add_argument("--impls", default="pallas,cudnn,xla", help="which implementations to time")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run and "jax" not in sys.modules:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if args.dry_run:
        jax.config.update("jax_platforms", "cpu")  # no-op when already initialised on CPU
    start = time.perf_counter()
    device = jax.devices()[0]
    info = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        jax_version=jax.__version__,
        python=platform.python_version(),
        backend=jax.default_backend(),
        device=getattr(device, "device_kind", str(device)),
        dry_run=args.dry_run,
    )
    print(f"jax {info['jax_version']} on {info['backend']}: {info['device']} (python {info['python']})", flush=True)
    if jax.default_backend() != "gpu" and not args.dry_run:
        print("no GPU: pass --dry_run to exercise the script on CPU in interpret mode")
        return 1
    sizes = _sizes(args)
    results = dict(info, sizes=sizes, correctness=[], tuning={}, timings=[])

    print("== correctness", flush=True)
    results["correctness"] = check_correctness(sizes)
    print("== tuning", flush=True)
    for n, hd in enumerate(sizes["head_dims"], 1):
        # Tuning may use up to a third of the budget, shared by the head dims, so timing gets the rest.
        deadline = start + args.budget_s / 3 * n / len(sizes["head_dims"])
        results["tuning"][str(hd)] = dict(fwd={}, bwd={}, note="skipped") if args.no_tune else tune(sizes, hd, deadline)
    print("== timing", flush=True)
    for hd in sizes["head_dims"]:
        params = {**results["tuning"][str(hd)].get("fwd", {}), **results["tuning"][str(hd)].get("bwd", {})}
        for seq in sizes["seqs"]:
            for causal in (False, True):
                for impl in sizes["impls"]:
                    row = dict(head_dim=hd, seq=seq, causal=causal, impl=impl)
                    if time.perf_counter() - start > args.budget_s:
                        row["error"] = "skipped: time budget"
                    else:
                        row.update(time_config(sizes, hd, seq, causal, impl, params))
                    results["timings"].append(row)
                    print("  " + json.dumps(row), flush=True)
                    _save(results, args.out)  # a run killed from outside still leaves what it measured
    results["elapsed_s"] = round(time.perf_counter() - start, 1)
    _save(results, args.out)
    print(f"wrote {args.out} ({results['elapsed_s']} s)")
    print_summary(results)
    return 0


def _save(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def _sizes(args):
    dry = args.dry_run
    ints = lambda s, default: [int(x) for x in s.split(",")] if s else default
    return dict(
        seqs=ints(args.seqs, [64] if dry else [2048, 4096, 8192, 16384]),
        head_dims=ints(args.head_dims, [32] if dry else [128, 64]),
        tokens=args.tokens or (128 if dry else 16384),
        width=args.width or (64 if dry else 2048),
        impls=[i for i in args.impls.split(",") if not (dry and i == "cudnn")],  # cuDNN needs a GPU
        check_len=64 if dry else 1024,
        tune_seq=64 if dry else 4096,
        block=32 if dry else None,  # dry run: small tiles; on GPU the kernel's / tuned defaults
        interpret=dry,
    )


# --------------------------------------------------------------------------- implementations


def attention_fn(impl, causal, sizes, params=None, segment_ids=None):
    """(q, k, v) -> out for one implementation; q/k/v [batch, seq, heads, head_dim]."""
    import jax

    from research_kernels.flash_attention import gpu

    if impl == "pallas":
        b = sizes["block"]
        kw = dict(block_q=b, block_kv=b, block_q_bwd=b, block_kv_bwd=b) if b else {}  # dry run: small tiles
        kw.update(params or {})  # tuned tiles / Triton launch parameters
        kw.update(causal=causal, segment_ids=segment_ids, interpret=sizes["interpret"])
        return lambda q, k, v: gpu.flash_attention(q, k, v, **kw)
    if impl in ("xla", "cudnn"):
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
    raise ValueError(f"unknown impl {impl!r}; choose pallas, cudnn or xla")


def _reference():
    """research.attention.dense_attention, or an equivalent local one when research can't be imported."""
    try:
        from research.attention.dense import dense_attention

        return dense_attention
    except Exception as e:  # e.g. a bare jax[cuda] environment without the project's dependencies
        print(f"  (research.attention unavailable: {e!r}; using a local dense reference)")
        import jax
        import jax.numpy as jnp

        def dense(q, k, v, *, causal=False, segment_ids=None):
            group = q.shape[2] // k.shape[2]
            k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
            ok = jnp.ones(s.shape[-2:], bool)
            if causal:
                ok = jnp.tril(ok)
            ok = ok[None, None]
            if segment_ids is not None:
                same = segment_ids[:, :, None] == segment_ids[:, None, :]
                ok = ok & (same & (segment_ids[:, None, :] != 0))[:, None]
            p = jax.nn.softmax(jnp.where(ok, s, -1e30), axis=-1)
            return jnp.einsum("bhqk,bkhd->bqhd", p, v)

        return dense


def _rand(shape, dtype, seed):
    import jax

    return jax.random.normal(jax.random.PRNGKey(seed), shape, "float32").astype(dtype)


# --------------------------------------------------------------------------- 1. correctness


def check_correctness(sizes):
    import jax
    import jax.numpy as jnp

    dense = _reference()
    L, hd_list = sizes["check_len"], sizes["head_dims"]
    cases = [("float32", hd_list[-1], causal, False) for causal in (False, True)]
    cases += [("bfloat16", hd, causal, False) for hd in hd_list for causal in (False, True)]
    cases += [("bfloat16", hd_list[0], True, True)]  # packed segments with padding
    if sizes["interpret"]:  # dry run: two cases cover both dtypes, causal, GQA and segments
        cases = [("float32", hd_list[0], True, True), ("bfloat16", hd_list[0], False, False)]
    out = []
    for dtype, hd, causal, segmented in cases:
        row = dict(dtype=dtype, head_dim=hd, seq=L, causal=causal, segments=segmented, heads=8, kv_heads=2)
        try:
            b = 2
            q = _rand((b, L, 8, hd), dtype, 0)
            k, v = _rand((b, L, 2, hd), dtype, 1), _rand((b, L, 2, hd), dtype, 2)
            ct = _rand((b, L, 8, hd), "float32", 3)
            seg = None
            valid = jnp.ones((b, L))
            if segmented:
                seg = jnp.array([[1] * (L // 2) + [2] * (L // 4) + [0] * (L - L // 2 - L // 4), [1] * L], jnp.int32)
                valid = (seg != 0).astype(jnp.float32)  # padding queries: flash gives 0, dense a uniform mix
            w = ct * valid[:, :, None, None]

            def run(attend, q, k, v, valid=valid, w=w):
                o, vjp = jax.vjp(attend, q, k, v)
                grads = vjp(w.astype(o.dtype))
                return [o.astype(jnp.float32) * valid[:, :, None, None]] + [g.astype(jnp.float32) for g in grads]

            kern = attention_fn("pallas", causal, sizes, segment_ids=seg)
            got = jax.jit(lambda q, k, v, f=kern: run(f, q, k, v))(q, k, v)
            f32 = [x.astype(jnp.float32) for x in (q, k, v)]
            ref_fn = lambda q, k, v, c=causal, s=seg: dense(q, k, v, causal=c, segment_ids=s)
            with jax.default_matmul_precision("highest"):
                ref = jax.jit(lambda q, k, v, f=ref_fn: run(f, q, k, v))(*f32)
            errs = {
                name: float(jnp.max(jnp.abs(a - r)) / jnp.maximum(jnp.max(jnp.abs(r)), 1e-6))
                for name, a, r in zip(("out", "dq", "dk", "dv"), got, ref, strict=True)
            }
            tol = 2e-2 if dtype == "bfloat16" else 1e-2
            row.update(rel_err={k: round(e, 6) for k, e in errs.items()}, tol=tol, ok=max(errs.values()) < tol)
        except Exception as e:
            row.update(ok=False, error=_short(e))
        print("  " + json.dumps(row), flush=True)
        out.append(row)
    return out


# --------------------------------------------------------------------------- 2. tuning

FWD_CANDIDATES = [  # (block_q, block_kv, num_warps, num_stages)
    (128, 128, 8, 2),
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 4, 2),
    (64, 64, 4, 3),
]
BWD_CANDIDATES = [  # (block_q_bwd, block_kv_bwd, num_warps_bwd, num_stages_bwd)
    (64, 64, 4, 2),
    (64, 128, 8, 2),
    (128, 64, 8, 2),
    (32, 64, 4, 3),
    (128, 128, 8, 2),
]


def tune(sizes, hd, deadline=math.inf):
    """Fastest forward settings, then fastest backward settings with that forward, at seq tune_seq, non-causal.

    Candidates left when time.perf_counter() passes `deadline` are skipped.
    """
    seq = sizes["tune_seq"]
    cands_f, cands_b = FWD_CANDIDATES, BWD_CANDIDATES
    if sizes["interpret"]:  # one candidate each: exercises the code path, cheaply
        cands_f, cands_b = [(32, 32, None, None)], [(32, 32, None, None)]
    best = dict(fwd={}, bwd={}, trials=[])
    best_t = math.inf
    for bq, bkv, w, s in cands_f:
        if time.perf_counter() > deadline:
            break
        p = dict(block_q=bq, block_kv=bkv, num_warps=w, num_stages=s)
        r = time_config(sizes, hd, seq, False, "pallas", p, modes=("fwd",))
        best["trials"].append(dict(p, **r))
        if r.get("fwd_ms", math.inf) < best_t:
            best_t, best["fwd"] = r["fwd_ms"], p
    best_t = math.inf
    for bq, bkv, w, s in cands_b:
        if time.perf_counter() > deadline:
            break
        p = dict(best["fwd"], block_q_bwd=bq, block_kv_bwd=bkv, num_warps_bwd=w, num_stages_bwd=s)
        r = time_config(sizes, hd, seq, False, "pallas", p, modes=("fwd_bwd",))
        best["trials"].append(dict(p, **r))
        if r.get("fwd_bwd_ms", math.inf) < best_t:
            best_t, best["bwd"] = r["fwd_bwd_ms"], {k: v for k, v in p.items() if k.endswith("_bwd")}
    print(f"  head_dim {hd}: forward {best['fwd'] or 'defaults'}, backward {best['bwd'] or 'defaults'}", flush=True)
    return best


# --------------------------------------------------------------------------- 3. timing


def flops(batch, heads, seq, hd, causal, mode):
    fwd = 4 * batch * heads * seq * seq * hd * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def time_config(sizes, hd, seq, causal, impl, params=None, modes=("fwd", "fwd_bwd")):
    """{fwd_ms, fwd_tflops, fwd_bwd_ms, fwd_bwd_tflops} (or *_error) for one configuration."""
    import jax

    batch = max(1, sizes["tokens"] // seq)
    heads = max(1, sizes["width"] // hd)
    out = dict(batch=batch, heads=heads)
    try:
        dtype = "bfloat16"
        q, k, v = (_rand((batch, seq, heads, hd), dtype, i) for i in range(3))
        do = _rand((batch, seq, heads, hd), dtype, 3)
        attend = attention_fn(impl, causal, sizes, params)
    except Exception as e:
        return dict(out, error=_short(e))
    fns = dict(
        fwd=jax.jit(attend),
        fwd_bwd=jax.jit(lambda q, k, v, do: jax.vjp(attend, q, k, v)[1](do)),
    )
    for mode in modes:
        try:
            args = (q, k, v) if mode == "fwd" else (q, k, v, do)
            sec = _time(fns[mode], args, quick=sizes["interpret"])
            out[f"{mode}_ms"] = round(sec * 1e3, 4)
            out[f"{mode}_tflops"] = round(flops(batch, heads, seq, hd, causal, mode) / sec / 1e12, 2)
        except Exception as e:
            out[f"{mode}_error"] = _short(e)
    return out


def _time(fn, args, quick=False):
    import jax

    jax.block_until_ready(fn(*args))  # compile + warm up
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - t0
    if quick:
        return once
    n = int(min(50, max(3, 0.05 / max(once, 1e-6))))
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            r = fn(*args)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _short(e):
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    if os.environ.get("FLASH_BENCH_TRACEBACKS"):
        traceback.print_exc()
    return msg[:300]


# --------------------------------------------------------------------------- summary


def print_summary(results):
    checks = results["correctness"]
    bad = [c for c in checks if not c.get("ok")]
    print(f"correctness: {len(checks) - len(bad)}/{len(checks)} ok" + (f"; failing: {bad}" if bad else ""))
    rows = {}
    for r in results["timings"]:
        key = (r["head_dim"], r["seq"], r["causal"])
        rows.setdefault(key, {})[r["impl"]] = r
    impls = [i for i in ("pallas", "cudnn", "xla") if any(i in v for v in rows.values())]
    head = f"{'hd':>4} {'seq':>6} {'causal':>6} | " + " ".join(f"{'fwd ' + i:>12}" for i in impls)
    head += " | " + " ".join(f"{'f+b ' + i:>12}" for i in impls)
    print(f"TFLOP/s, bf16, {results['device']}, jax {results['jax_version']}, {results['date']}")
    print(head)
    for (hd, seq, causal), by in rows.items():
        cell = lambda i, m, by=by: f"{by[i][m + '_tflops']:>12.1f}" if f"{m}_tflops" in by.get(i, {}) else f"{'-':>12}"
        line = f"{hd:>4} {seq:>6} {causal!s:>6} | " + " ".join(cell(i, "fwd") for i in impls)
        print(line + " | " + " ".join(cell(i, "fwd_bwd") for i in impls))
    key = (128, 8192, False)
    if key in rows and "fwd_tflops" in rows[key].get("pallas", {}):
        f = rows[key]["pallas"]["fwd_tflops"]
        print(f"target fwd >= {TARGET_FWD_TFLOPS:.0f} TFLOP/s at hd 128 seq 8k (non-causal): {f:.1f} ", end="")
        print("met" if f >= TARGET_FWD_TFLOPS else "NOT met")


if __name__ == "__main__":
    sys.exit(main())
