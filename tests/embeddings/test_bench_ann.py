"""The ANN benchmark runs end to end at a tiny size and ends with its JSON line; with the `ann`
extra its faiss peer rows are checked too."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def record():
    command = [sys.executable, "-m", "research.bench.ann", "--n=3000", "--dim=16", "--queries=16", "--repeats=1"]
    command += ["--lsh=4,8,2,16", "--lsh=16,8,4,32", "--recall_target=0.9", "--nprobe=1", "--nprobe=64"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_ann_tiny(record):
    assert record["n"] == 3000 and record["dim"] == 16 and record["exact_qps"] > 0
    by_method = {(p["method"], p["setting"]): p for p in record["points"]}
    assert by_method[("exact", "chunk_size=4096")]["recall_at_10"] == 1.0
    lsh = [p for p in record["points"] if p["method"] == "lsh"]
    assert len(lsh) == 2 and lsh[0]["recall_at_10"] < lsh[1]["recall_at_10"]
    assert all(p["qps"] > 0 and p["speedup"] > 0 for p in record["points"])


@pytest.mark.skipif(
    importlib.util.find_spec("faiss") is None,
    reason="faiss-cpu is in the ann extra (pip install -e .[ann]): the benchmark's faiss rows are unchecked",
)
def test_faiss_peer_rows(record):
    flat = [p for p in record["points"] if p["method"] == "faiss-flat"]
    ivf = {p["setting"].split("nprobe=")[1]: p for p in record["points"] if p["method"] == "faiss-ivf"}
    assert len(flat) == 1 and flat[0]["recall_at_10"] == 1.0  # exact inner product: our exact top-10, same ids
    assert set(ivf) == {"1", "64"} and ivf["1"]["recall_at_10"] < ivf["64"]["recall_at_10"]
    assert all(p["qps"] > 0 for p in [*flat, *ivf.values()])
