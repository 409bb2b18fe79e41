import math

import pytest

from research.bench import trl_peer


def test_trl_grpo_tiny():
    if not trl_peer.trl_available():
        pytest.skip(
            "trl not installed (pip install -e .[peers]): the TRL GRPOTrainer peer of research.bench.rl is unchecked"
        )
    seconds = trl_peer.trl_grpo_seconds_per_step(
        layers=1, d_model=32, heads=2, prompts=2, group=2, new_tokens=4, steps=1
    )
    assert isinstance(seconds, float)
    assert math.isfinite(seconds) and seconds > 0


def test_missing_trl_raises_clear_import_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trl(name, *args, **kwargs):
        if name == "trl" or name.startswith("trl."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trl)
    with pytest.raises(ImportError, match=r"pip install -e \.\[peers\]"):
        trl_peer.trl_grpo_seconds_per_step(layers=1, d_model=32, heads=2, prompts=2, group=2, new_tokens=4, steps=1)
