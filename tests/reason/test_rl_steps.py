"""experiments/rl_steps.py at a toy size: its GRPO stage stopped after a checkpoint and resumed equals an
uninterrupted run, and its evaluation logs what the experiment plots (accuracy, thinking, length)."""

import jax
import numpy as np
import pytest

from research.experiment import apply_overrides, load_experiment
from research.train.loop import train
from research.train.metrics import read_metrics
from tests.train.test_end_to_end import final_params

pytestmark = pytest.mark.slow

TOY_MODEL = {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.num_kv_heads": 1,
             "model.mlp_dim": 64}  # fmt: skip


def test_rl_steps_resume_equals_an_uninterrupted_run(tmp_path):
    experiment, _ = load_experiment("experiments/rl_steps.py")
    sft = apply_overrides(experiment.get_sft_config(None), {
        **TOY_MODEL, "train.steps": 2, "train.batch_size": 8, "train.checkpoint_every": 2, "train.eval_every": 2,
        "sft.eval_examples": 0,
    })  # fmt: skip
    train(sft, tmp_path / "sft")
    grpo = apply_overrides(experiment.get_config(None), {
        **TOY_MODEL, "post.base_workdir": str(tmp_path / "sft"), "rl.rollout_prompts": 4, "grpo.group_size": 4,
        "train.batch_size": 8, "train.steps": 4, "train.checkpoint_every": 2, "train.eval_every": 4,
        "policy.eval_prompts": 2, "policy.eval_samples": 2,
        "optim.min_lr_ratio": 1.0,  # a constant rate: a run told to stop at step 2 is the first half of the whole
    })  # fmt: skip
    train(grpo, tmp_path / "whole")
    train(apply_overrides(grpo, {"train.steps": 2}), tmp_path / "halves")  # stops after its step-2 checkpoint
    assert not (tmp_path / "halves" / "checkpoints" / "4").exists()
    train(grpo, tmp_path / "halves")  # resumes: rollout 1 from fold_in(seed, 1), as the whole run drew it
    step_a, params_a = final_params(tmp_path / "whole")
    step_b, params_b = final_params(tmp_path / "halves")
    assert step_a == step_b == 4
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)
    evals = [m for m in read_metrics(tmp_path / "whole") if "eval_gold_reward" in m]
    logged = {"eval_thinks", "eval_well_formed", "eval_response_length", "eval_reward_tinyzero"}
    assert evals and logged <= set(evals[-1])
    assert 0 <= evals[-1]["eval_thinks"] <= 1
