"""The GPU benchmark script end to end in its --dry_run mode (CPU, interpret mode, tiny sizes).

No GPU here, so this is what keeps research/bench/flash_gpu.py from rotting: every
step (correctness, tuning, timing, JSON, table) runs on the real kernel code.
"""

import json

from research.bench import flash_gpu


def test_dry_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "flash.json"
    assert flash_gpu.main(["--dry_run", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["dry_run"] and results["jax_version"]
    assert results["correctness"] and all(c["ok"] for c in results["correctness"]), results["correctness"]
    assert {c["dtype"] for c in results["correctness"]} == {"float32", "bfloat16"}
    timings = results["timings"]
    assert {(t["impl"], t["causal"]) for t in timings} == {
        ("pallas", False),
        ("pallas", True),
        ("xla", False),
        ("xla", True),
    }
    for t in timings:
        assert "error" not in t and t["fwd_ms"] > 0 and t["fwd_bwd_ms"] > 0, t
    assert all("error" not in t for t in results["tuning"]["32"]["trials"]), results["tuning"]
    assert results["tuning"]["32"]["fwd"] == {"block_q": 32, "block_kv": 32, "num_warps": None, "num_stages": None}
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-3].split()[:3] == ["hd", "seq", "causal"]  # the table comes last
    assert printed[-1].split()[:3] == ["32", "64", "True"]


def test_flop_convention():
    full = flash_gpu.flops(2, 16, 8192, 128, causal=False, mode="fwd")
    assert full == 4 * 2 * 16 * 8192**2 * 128
    assert flash_gpu.flops(2, 16, 8192, 128, causal=True, mode="fwd") == full / 2
    assert flash_gpu.flops(2, 16, 8192, 128, causal=False, mode="fwd_bwd") == 3.5 * full
