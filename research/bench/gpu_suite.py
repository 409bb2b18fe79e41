"""The prepared accelerator script: flash attention kernels, then the model-level step, within 9 minutes.

    python -m research.bench.gpu_suite --out_dir gpu_results            # one H100/H200
    python -m research.bench.gpu_suite --out_dir /tmp/gpu --dry_run     # CPU: exercises both parts

Runs research.bench.flash_gpu (correctness, tuning, kernel timings; --flash_budget_s) and then
research.bench.model_gpu (the ~125M decoder's bf16 train step and its MFU; --model_budget_s) in one
process, each writing its JSON into --out_dir as it goes, so a run stopped from outside keeps what it
measured. Budgets are the times after which a part starts nothing new; the defaults leave ~1.5 minutes
of the 9 for compiles already under way and start-up.
"""

import argparse
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="gpu_results")
    p.add_argument("--dry_run", action="store_true")
    p.add_argument("--flash_budget_s", type=float, default=270.0)
    p.add_argument("--model_budget_s", type=float, default=150.0)
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    from research.bench import flash_gpu, model_gpu

    dry = ["--dry_run"] if a.dry_run else []
    start = time.perf_counter()
    codes = {}
    print("=== research.bench.flash_gpu", flush=True)
    codes["flash_gpu"] = flash_gpu.main(
        [*dry, "--out", os.path.join(a.out_dir, "flash_gpu.json"), "--budget_s", str(a.flash_budget_s)]
    )
    print(f"=== research.bench.model_gpu ({time.perf_counter() - start:.0f} s in)", flush=True)
    codes["model_gpu"] = model_gpu.main(
        [*dry, "--out", os.path.join(a.out_dir, "model_gpu.json"), "--budget_s", str(a.model_budget_s)]
    )
    print(f"=== done in {time.perf_counter() - start:.0f} s; exit codes {codes}")
    return max(codes.values())


if __name__ == "__main__":
    raise SystemExit(main())
