"""The benchmarks' sweeps (research.bench.train / generate): shapes, slopes, and a tiny run of each CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from research.bench import common, train

BASE = train.Shape(layers=1, d_model=32, heads=2, vocab=64, seq=16, batch=4)
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # the message below names 8
TINY = ["--layers=1", "--d_model=32", "--heads=2", "--vocab=64"]


def test_fit_slope_recovers_a_power_law():
    sizes = [128, 256, 512, 1024]
    assert common.fit_slope(sizes, [3e-6 * s**1.5 for s in sizes]) == pytest.approx(1.5)
    assert np.isnan(common.fit_slope([128], [1.0]))


def test_width_sweep_keeps_the_head_dim():
    shapes = train.sweep_shapes(BASE, "d_model", ["16", "64"])
    assert [(s.d_model, s.heads) for s in shapes] == [(16, 1), (64, 4)]
    with pytest.raises(ValueError, match="--sweep_d_model value 24 is not a positive multiple of the head dim 16"):
        train.sweep_shapes(BASE, "d_model", [24])


def test_length_sweep_keeps_tokens_per_step():
    shapes = train.sweep_shapes(BASE, "seq", [8, 32, 128])
    assert [(s.seq, s.batch) for s in shapes] == [(8, 8), (32, 2), (128, 1)]


def test_sweep_refuses_a_length_the_attention_blocks_do_not_split():
    blocked = train.Shape(**{**train.Shape.short(BASE), "attention": "blockwise"})
    block = train.common.variant_defaults("blockwise")
    bad = 3 * max(v for v in block.values() if isinstance(v, int)) // 2
    with pytest.raises(ValueError, match=f"--sweep_seq={bad} does not split into the blocks"):
        train.sweep_shapes(blocked, "seq", [bad])


def _last_json(args):
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


def test_train_sweep_cli():
    args = [
        "research.bench.train",
        *TINY,
        "--nopeer",
        "--seq=16",
        "--batch=8",
        "--steps=1",
        "--rounds=1",
        "--sweep_seq=8,16",
    ]
    stdout, rec = _last_json(args)
    assert rec["sweep"] == "seq" and rec["sizes"] == [8, 16]
    for p in rec["points"]:
        assert p["tokens_per_sec"] > 0 and 0 < p["peak_fraction"] and p["speedup_vs_peer"] is None
    assert np.isfinite(rec["slope"])
    assert "fitted log-log slope of step time vs seq" in stdout


def test_generate_sweep_cli():
    args = ["research.bench.generate", *TINY, "--nopeer", "--batch=2", "--new_tokens=4", "--repeats=1"]
    _, rec = _last_json([*args, "--sweep_prompt_len=4,8"])
    assert rec["sizes"] == [4, 8] and np.isfinite(rec["slope"]) and rec["read_bandwidth"] > 0
    for p in rec["points"]:
        assert p["per_batch"]["2"]["tokens_per_sec"] > 0 and p["per_batch"]["2"]["floor_fraction"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["research.bench.train", "--d_model=30", "--heads=4"], "--heads=4 must divide --d_model=30"),
        (["research.bench.train", *TINY, "--batch=4"], "--batch=4: the batch must divide over 8 devices"),
        (["research.bench.generate", *TINY, "--sweep_prompt_len=8,0"], "--sweep_prompt_len=0 must be >= 1"),
    ],
)
def test_cli_names_the_flag_of_a_bad_shape(args, message):
    """(research.bench.generate defines flags of the same names as train's: it runs in its own process.)"""
    out = subprocess.run(
        [sys.executable, "-m", *args, "--nopeer"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
