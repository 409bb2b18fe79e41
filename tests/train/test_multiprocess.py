"""2 processes x 2 CPU devices (jax.distributed on localhost) == 1 process x 4 devices."""

import re
import signal
import subprocess
import time

import numpy as np
import portpicker
import pytest

from research.train.metrics import read_metrics
from tests.train.conftest import REPO, main_command, run, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

FLAGS = [
    "--config.train.steps=10",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=10",
    "--config.data.num_shards=2",
    "--config.mesh.fsdp=2",
    "--nosample",
]


def losses(workdir):
    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def launch_two(workdir, data_dir, flags):
    port = portpicker.pick_unused_port()
    return [
        subprocess.Popen(
            main_command(
                workdir, data_dir, *flags, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env=subprocess_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]  # fmt: skip


def test_two_processes_match_one(tmp_path, data_dir):
    run(main_command(tmp_path / "single", data_dir, *FLAGS), devices=4)

    procs = launch_two(tmp_path / "multi", data_dir, FLAGS)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    single, multi = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert sorted(single) == sorted(multi) == [5, 10]
    # Same global batches (num_shards=2 fixes them), same mesh shape; only the
    # cross-process all-reduce order may differ: float32 rounding, 1e-5 relative.
    np.testing.assert_allclose([multi[s] for s in (5, 10)], [single[s] for s in (5, 10)], rtol=1e-5)
    evals = [
        [m["eval_loss"] for m in read_metrics(w) if "eval_loss" in m] for w in (tmp_path / "single", tmp_path / "multi")
    ]
    np.testing.assert_allclose(evals[1], evals[0], rtol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "10" / "data" / "process_1-of-2.json").exists()


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, data_dir):
    """A preemption notice reaches one host: JAX's preemption sync service picks a step both reach,
    both save it (each its own data-iterator state) and exit 143."""
    workdir = tmp_path / "multi"
    long_run = ["--config.train.steps=400", "--config.train.eval_every=1000", "--config.train.log_every=1000"]
    procs = launch_two(workdir, data_dir, [*FLAGS, *long_run])
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "10").exists() and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # not process 0, which writes the metrics and the report
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errs[0][-2000:] + errs[1][-2000:]
    steps = [int(re.search(r"saved a checkpoint at step (\d+) and stopped", e).group(1)) for e in errs]
    assert steps[0] == steps[1] and 10 <= steps[0] < 400
    data = workdir / "checkpoints" / str(steps[0]) / "data"
    assert sorted(p.name for p in data.glob("process_*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
