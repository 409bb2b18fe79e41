"""Fixtures for end-to-end runs: a prepared corpus and a subprocess launcher."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# JAX's persistent compilation cache, shared by this test process's subprocess runs: the kill/resume
# tests launch one config three times, and the later launches load the first one's executables
# instead of compiling again (on this machine a 60-step run went from 22 s to 12 s). The same
# executable computes the same bits, so the bitwise comparisons still compare real runs.
COMPILATION_CACHE = tempfile.mkdtemp(prefix="research-tests-jax-cache-")
atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)

# A model small enough that a run compiles and trains in seconds on 2 cores.
TINY_FLAGS = [
    "--config.model.num_layers=2",
    "--config.model.d_model=64",
    "--config.model.num_heads=4",
    "--config.model.num_kv_heads=2",
    "--config.data.seq_len=64",
    "--config.train.batch_size=8",
    "--config.train.eval_batches=2",
    "--config.train.log_every=5",
    "--config.sample.num_samples=2",
    "--config.sample.max_new_tokens=16",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The real stdlib corpus, prepared once (about a second) in a private TFDS data_dir."""
    from research.data import DataSpec, load_sources

    path = str(tmp_path_factory.mktemp("tfds"))
    load_sources(
        DataSpec(
            name="python_stdlib",
            data_dir=path,
            text_key="text",
            train_split="train",
            eval_split="validation",
            seq_len=64,
            global_batch_size=8,
            num_shards=1,
            seed=0,
        )
    )
    return path


def main_command(workdir, data_dir, *extra, config="experiments/quickstart.py"):
    return [
        sys.executable,
        "-m",
        "research.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *TINY_FLAGS,
        *extra,
    ]


def subprocess_env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"  # the expensive ones; not every small jit
    return env


def run(cmd, devices=1, timeout=300, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(devices), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result
