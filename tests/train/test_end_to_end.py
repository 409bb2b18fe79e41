"""Whole runs through `python -m research.main`: smoke, kill/resume, config and workdir errors."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from etils import epath
from ml_collections import config_flags

from research.train.metrics import read_metrics
from tests.train.conftest import REPO, main_command, run, subprocess_env

pytestmark = pytest.mark.slow


def final_params(workdir):
    """The newest checkpoint's params as numpy, read without knowing the model."""
    manager = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", item_names=("state", "data"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


# The quickstart run every test here reads: 60 steps on a 2-device data mesh, checkpoints every 10,
# samples printed at the end. Smoke, research.sample, the kill/resume reference and the refused
# workdir all use this one run (its workdir is never written after the fixture).
REFERENCE_FLAGS = [
    "--config.train.steps=60",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=30",
    "--config.mesh.data=2",
]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("e2e") / "reference"
    relative = os.path.relpath(workdir, REPO)  # as the README's quickstart passes it
    result = run(main_command(relative, data_dir, *REFERENCE_FLAGS), devices=2)
    return workdir, result


def test_quickstart_smoke_trains_and_samples(reference_run):
    workdir, result = reference_run
    metrics = read_metrics(workdir)
    train = [m for m in metrics if "loss" in m]
    assert {"step", "loss", "learning_rate", "tokens_per_sec"} <= set(train[-1])
    assert [m["step"] for m in metrics if "eval_loss" in m] == [30, 60]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5  # from ~ln(263) = 5.6 the loss falls quickly
    assert (workdir / "tensorboard").is_dir() and (workdir / "tokenizer.json").exists()
    assert (workdir / "loss.png").stat().st_size > 0 and "| 60 |" in (workdir / "results.md").read_text()
    assert result.stdout.count("=" * 80) == 2  # two samples printed
    sample = run(
        [
            sys.executable,
            "-m",
            "research.sample",
            f"--workdir={workdir}",
            "--prompt=def ",
            "--prompt=import ",
            "--max_new_tokens=8",
            "--temperature=0",
        ]
    )
    assert "def " in sample.stdout and "import " in sample.stdout


def launch_until(workdir, data_dir, flags, checkpoint_step, sig):
    """Starts the run, sends `sig` once checkpoint `checkpoint_step` exists; returns (returncode, stderr)."""
    proc = subprocess.Popen(
        main_command(workdir, data_dir, *flags),
        cwd=REPO,
        env=subprocess_env(2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / str(checkpoint_step)).exists() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert not (workdir / "checkpoints" / "60").exists(), "the run finished before the signal came"
    return proc.returncode, stderr


def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tmp_path, data_dir, reference_run):
    """A spot VM's SIGTERM (save at the current step, exit 143), then a hard SIGKILL of the rerun (resume
    from the newest periodic checkpoint), then a rerun to the end: bitwise the uninterrupted run."""
    reference, _ = reference_run
    flags = [*REFERENCE_FLAGS, "--nosample"]  # sampling comes after the last checkpoint: same params
    workdir = tmp_path / "interrupted"
    code, stderr = launch_until(workdir, data_dir, flags, 20, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-2000:]
    step = int(re.search(r"SIGTERM received: saved a checkpoint at step (\d+) and stopped", stderr).group(1))
    assert 20 <= step < 60 and (workdir / "checkpoints" / str(step)).exists()
    assert max(m["step"] for m in read_metrics(workdir)) == step  # the window up to the stop was flushed

    code, _ = launch_until(workdir, data_dir, flags, 40, signal.SIGKILL)  # resumes at `step`, killed after 40
    assert code == -signal.SIGKILL and (workdir / "checkpoints" / "40").exists()

    run(main_command(workdir, data_dir, *flags), devices=2)  # resumes from the newest checkpoint
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(workdir)
    assert step_a == step_b == 60
    leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)  # same batches, same maths, same order: bitwise equal
    loss = lambda w: [m["loss"] for m in read_metrics(w) if m["step"] == 60 and "loss" in m][-1]  # noqa: E731
    assert loss(reference) == loss(workdir)


def test_incompatible_workdir_is_refused_and_untouched(data_dir, reference_run):
    workdir, _ = reference_run
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    flags = [*REFERENCE_FLAGS, "--config.train.steps=70", "--config.model.d_model=128"]
    result = run(main_command(workdir, data_dir, *flags), devices=2, check=False)
    assert result.returncode == 2
    assert "model.d_model: 64 -> 128" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def parse_config(*extra):
    """The config `research.main` would build from these flags (absl + ml_collections, in process)."""
    argv = ["research.main", "--config=experiments/quickstart.py", *extra]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--config.model.nope=1", "nope"),  # ml_collections: AttributeError "'nope'" (did you mean ...)
        ("--config.train.steps=ten", "train.steps"),
    ],
)
def test_bad_override_names_the_key(flag, message):
    with pytest.raises((flags.Error, AttributeError), match=message):
        parse_config(flag)


def test_unknown_override_names_the_nearest_keys():
    from research.launch import unknown_override

    quick = ["research.main", "--config=experiments/quickstart.py"]
    message = unknown_override([*quick, "--config.train.steps=3", "--config.model.atention=dense"])
    assert message.startswith("--config.model.atention is not a config key of experiments/quickstart.py")
    assert "nearest: model.attention" in message
    sweep = ["research.sweep", "--config", "experiments/tokenizers.py:steps=3", "--config.trian.steps", "3"]
    assert "nearest: train.steps" in unknown_override(sweep)  # `--flag value` forms, an experiment's arg
    assert "nearest" not in unknown_override([*quick, "--config.zzzzzz=1"])  # nothing close: no guess
    assert unknown_override([*quick, "--config.train.steps=3"]) is None  # every key exists
    assert unknown_override(["research.main", "--config.model.x=1"]) is None  # no config file named


def test_unknown_override_exits_2_with_one_line(tmp_path, data_dir):
    result = run(main_command(tmp_path / "run", data_dir, "--config.model.atention=dense"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --config.model.atention is not a config key of experiments/quickstart.py; "
        "nearest: model.attention, model.position, model.norm"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--config.model.num_kv_heads=3", "model.num_kv_heads=3"),
        ("--config.model.d_model=66", "model.d_model=66"),
        ("--config.mesh.data=3", "mesh"),
        ("--config.model.attention=sparse", "model.attention='sparse'"),
    ],
)
def test_bad_config_names_the_key_before_writing(tmp_path, data_dir, flag, message):
    from research.train.loop import train

    config = parse_config(f"--config.data.data_dir={data_dir}", flag)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_config_exits_2_with_one_line(tmp_path, data_dir):
    """The command line's side of the errors above: exit code 2, the message, no traceback."""
    result = run(main_command(tmp_path / "run", data_dir, "--config.model.num_kv_heads=3"), check=False)
    assert result.returncode == 2
    assert "error: " in result.stderr and "model.num_kv_heads=3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_learned_tokenizer_is_trained_once_saved_and_reused(tmp_path, data_dir):
    workdir = tmp_path / "run"
    flags = [
        "--config.data.tokenizer=bpe",
        "--config.data.vocab_size=300",
        "--config.data.tokenizer_sample_bytes=200000",
    ]
    run(main_command(workdir, data_dir, "--config.train.steps=4", "--nosample", *flags))
    saved = (workdir / "tokenizer.json").read_text()
    assert '"type": "bpe"' in saved
    result = run(main_command(workdir, data_dir, "--config.train.steps=8", *flags))  # resumes, then samples
    assert (workdir / "tokenizer.json").read_text() == saved
    assert [m["step"] for m in read_metrics(workdir) if "eval_loss" in m][-1] == 8
    assert result.stdout.count("=" * 80) == 2
    refused = run(
        main_command(workdir, data_dir, "--config.train.steps=9", *flags[:1], "--config.data.vocab_size=400"),
        check=False,
    )
    assert refused.returncode == 2 and "data.vocab_size: 300 -> 400" in refused.stderr
