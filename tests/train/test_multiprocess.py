"""2 processes x 2 CPU devices (jax.distributed on localhost) == 1 process x 4 devices."""

import subprocess

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


def test_two_processes_match_one(tmp_path, data_dir):
    run(main_command(tmp_path / "single", data_dir, *FLAGS), devices=4)

    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            main_command(
                tmp_path / "multi",
                data_dir,
                *FLAGS,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env=subprocess_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
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
