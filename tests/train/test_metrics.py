"""Metrics sinks (research/train/metrics.py): metrics.jsonl always, and the trackers train.trackers names."""

import importlib.util

import pytest

from research.config import default_config
from research.train import metrics
from research.train.metrics import MetricsWriter, read_metrics, tracker_names


def config_with(trackers):
    c = default_config()
    c.train.trackers = trackers
    return c


def test_tracker_names_and_their_errors(monkeypatch):
    assert tracker_names("") == [] and tracker_names("tensorboard, wandb") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"train.trackers='tensorboard,mlflow': 'mlflow' is not a tracker"):
        tracker_names("tensorboard,mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ValueError, match=r"'wandb' needs the wandb package \(pip install -e '.\[wandb\]'\)"):
        tracker_names("wandb")


def test_trackers_get_the_numbers_and_jsonl_gets_everything(tmp_path, monkeypatch):
    """Adding a tracker is one class: it sees each record's numbers (no bools, strings or lists)."""
    seen = []

    class Recorder:
        package = "json"

        def __init__(self, workdir, config):
            seen.append(("init", workdir, config.train.trackers))

        def write(self, step, scalars):
            seen.append((step, scalars))

        def close(self):
            seen.append("close")

    monkeypatch.setitem(metrics.TRACKERS, "recorder", Recorder)
    writer = MetricsWriter(tmp_path, config_with("recorder"))
    writer.write(3, {"loss": 1.5, "tokens": 7, "finite": True, "note": "x", "per_expert": [0.5, 0.5]})
    writer.close()
    assert seen == [("init", tmp_path, "recorder"), (3, {"loss": 1.5, "tokens": 7}), "close"]
    assert read_metrics(tmp_path) == [
        {"step": 3, "loss": 1.5, "tokens": 7, "finite": True, "note": "x", "per_expert": [0.5, 0.5]}
    ]
    assert not (tmp_path / "tensorboard").exists()  # only the trackers asked for


def test_wandb_offline_logs_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "tests")
    writer = MetricsWriter(tmp_path, config_with("wandb,tensorboard"))
    for step in range(3):
        writer.write(step, {"loss": 1.0 / (step + 1)})
    run = writer._trackers[0]._run
    assert run.config["train"]["trackers"] == "wandb,tensorboard"  # the run's whole config
    # W&B commits a step when a later step comes (so a step's train and eval records join) or at the end.
    assert run.summary["loss"] == pytest.approx(1 / 2)
    writer.close()
    run_id = (tmp_path / "wandb_id.txt").read_text()
    assert [p.name.endswith(run_id) for p in (tmp_path / "wandb").glob("offline-run-*")] == [True]
    assert (tmp_path / "tensorboard").is_dir() and [m["step"] for m in read_metrics(tmp_path)] == [0, 1, 2]
    # A resumed run (the same workdir) logs to the same W&B run id.
    writer = MetricsWriter(tmp_path, config_with("wandb"))
    assert writer._trackers[0]._run.id == run_id
    writer.close()
