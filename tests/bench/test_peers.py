import math

import pytest

from research.bench.peak import (
    decode_flops_per_token,
    measure_matmul_peak_flops,
    transformer_train_flops_per_token,
)

TINY = dict(layers=2, d_model=32, heads=2, vocab=64)


def test_matmul_peak_positive_finite():
    flops = measure_matmul_peak_flops(n=128, repeats=2)  # small n: only checks plumbing
    assert math.isfinite(flops) and flops > 0


def test_flops_formulas_hand_computed():
    # L=2, d=4, V=10, seq=3: N = 12*2*16 + 10*4 = 424; train = 6*424 + 12*2*4*3 = 2544 + 288
    assert transformer_train_flops_per_token(2, 4, 10, 3) == 2832
    # decode, ctx=3: 2*424 + 4*2*4*3 = 848 + 96
    assert decode_flops_per_token(2, 4, 10, 3) == 944


def unchecked(what: str) -> str:
    return f"peers extra not installed (pip install -e .[peers]): {what} is unchecked"


def test_hf_train_tiny():
    pytest.importorskip("transformers", reason=unchecked("the HF training peer of research.bench.train"))
    from research.bench.hf_peer import hf_train_tokens_per_sec

    tps = hf_train_tokens_per_sec(**TINY, seq=16, batch=2, steps=2, warmup=1)
    assert math.isfinite(tps) and tps > 0


def test_hf_generate_tiny():
    pytest.importorskip("transformers", reason=unchecked("the HF generation peer of research.bench.generate"))
    from research.bench.hf_peer import hf_generate_tokens_per_sec

    tps = hf_generate_tokens_per_sec(**TINY, prompt_len=4, new_tokens=8, batch=2, repeats=1)
    assert math.isfinite(tps) and tps > 0
