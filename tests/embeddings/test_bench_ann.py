"""The ANN benchmark runs end to end at a tiny size and ends with its JSON line."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_ann_tiny():
    command = [sys.executable, "-m", "research.bench.ann", "--n=3000", "--dim=16", "--queries=16", "--repeats=1"]
    command += ["--lsh=4,8,2,16", "--lsh=16,8,4,32", "--recall_target=0.9", "--nprobe=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["n"] == 3000 and record["dim"] == 16 and record["exact_qps"] > 0
    by_method = {(p["method"], p["setting"]): p for p in record["points"]}
    assert by_method[("exact", "chunk_size=4096")]["recall_at_10"] == 1.0
    lsh = [p for p in record["points"] if p["method"] == "lsh"]
    assert len(lsh) == 2 and lsh[0]["recall_at_10"] < lsh[1]["recall_at_10"]
    assert all(p["qps"] > 0 and p["speedup"] > 0 for p in record["points"])
