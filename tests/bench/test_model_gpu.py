"""The accelerator scripts end to end in --dry_run mode (CPU, tiny sizes): what keeps them from rotting."""

import json

import pytest

from research.bench import gpu_suite, model_gpu
from research.bench.peak import known_peak_flops, transformer_train_flops_per_token


def test_known_peaks_pick_the_most_specific_kind():
    assert known_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert known_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert known_peak_flops("TPU v5 lite") == 197e12
    assert known_peak_flops("cpu") is None


def test_model_shape_is_gpt2_small():
    shape = model_gpu.shape_for(model_gpu.parse_args([]))("flash")
    assert (shape.layers, shape.d_model, shape.heads, shape.seq, shape.dtype) == (12, 768, 12, 2048, "bfloat16")
    assert 100e6 < model_gpu._matmul_params(shape) < 130e6
    with pytest.raises(SystemExit):
        model_gpu.parse_args(["--batch", "0"])


def test_suite_dry_run_end_to_end(tmp_path, capsys):
    """Both parts run on the real code paths (flash through the Pallas kernel in interpret mode)."""
    assert gpu_suite.main(["--dry_run", "--out_dir", str(tmp_path)]) == 0
    flash = json.loads((tmp_path / "flash_gpu.json").read_text())
    assert flash["dry_run"] and all(c["ok"] for c in flash["correctness"])
    model = json.loads((tmp_path / "model_gpu.json").read_text())
    assert [r["impl"] for r in model["rows"]] == ["flash", "dense"]
    import jax

    shape = model_gpu.shape_for(model_gpu.parse_args(["--dry_run"]), jax.device_count())("flash")
    for row in model["rows"]:
        assert "error" not in row, row
        # MFU recomputed from the row's own numbers: tokens/s x FLOPs per token / peak
        flops = transformer_train_flops_per_token(shape.layers, shape.d_model, shape.vocab, shape.seq)
        assert row["mfu"] == pytest.approx(row["tokens_per_sec"] * flops / model["peak_flops"])
        assert row["tokens_per_sec"] == pytest.approx(shape.tokens / row["step_s"])
    assert model["peak_source"] == "measured bf16 matmul"
    assert "MFU" in capsys.readouterr().out
