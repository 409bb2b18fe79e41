"""GRPO killed mid-run (SIGKILL) and resumed equals the uninterrupted run, bit for bit: rollouts and LoRA
dropout both draw from the rng, so its plumbing across a resume is checked too."""

import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.train.conftest import REPO, run, subprocess_env
from tests.train.test_end_to_end import final_params

pytestmark = pytest.mark.slow

CONFIG = """
from tests.post.conftest import post_config

def get_config(arg=None):
    c = post_config("grpo", {data_dir!r}, {base!r}, steps=8)
    c.rl.epochs = 2  # each rollout feeds 2 epochs x 2 minibatches = 4 updates: checkpoints fall between rollouts
    c.train.update(checkpoint_every=4, eval_every=8, log_every=2)
    c.policy.eval_prompts = 0  # what is compared is the parameters: no sampled evaluation to compile
    # LoRA dropout makes the update itself read the step's rng, not only the rollouts: a resume that
    # restored the wrong key, or derived it from the wall clock, would differ.
    c.peft.update(method="lora", rank=4, dropout=0.25)
    return c
"""


def test_sigkill_during_grpo_then_resume_equals_uninterrupted(tmp_path, sentiment_data_dir, base_run):
    config_file = tmp_path / "grpo_config.py"
    config_file.write_text(CONFIG.format(data_dir=sentiment_data_dir, base=str(base_run)))

    def command(workdir):
        return [sys.executable, "-m", "research.main", f"--config={config_file}", f"--workdir={workdir}", "--nosample"]

    reference = tmp_path / "reference"
    run(command(reference), devices=2)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), cwd=REPO, env=subprocess_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "4").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "8").exists(), "the run finished before it could be killed"
    run(command(killed), devices=2)  # resumes from step 4: the next rollout, same prompts, same draws
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(killed)
    assert step_a == step_b == 8
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)
