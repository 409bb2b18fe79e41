"""research.bench.rl end to end at a tiny shape: its table and its last-line JSON."""

import json
import sys

import pytest

from tests.train.conftest import run

pytestmark = pytest.mark.slow


def test_rl_benchmark_tiny():
    cmd = [sys.executable, "-m", "research.bench.rl", "--layers=1", "--d_model=32", "--heads=2", "--prompts=2",
           "--group=2", "--new_tokens=4", "--steps=1", "--repeats=1", "--nopeer"]  # fmt: skip
    record = json.loads(run(cmd).stdout.strip().splitlines()[-1])
    for key in ("grpo_seconds_per_step", "rollout_tokens_per_sec", "generate_tokens_per_sec"):
        assert record[key] > 0, key
    parts = sum(record[f"{k}_seconds"] for k in ("rollout", "scoring", "processing", "update"))
    assert abs(parts - record["grpo_seconds_per_step"]) < 1e-9
