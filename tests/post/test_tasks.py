"""The reward, dpo, ppo and grpo tasks on a tiny base LM: losses at the start, rollouts, sharding, bad input."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.decode import sample
from research.post import advantages as adv_lib
from research.post.rewards import RewardInputs, Rewards
from research.tokenizers import load_tokenizer
from research.train.loop import train
from research.train.runs import load_run
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.sources import to_global
from research.train.state import create_train_state, make_optimizer
from research.train.step import train_step
from research.train.tasks import get_task, validate_config
from tests.post.conftest import post_config


def setup(config, base, devices=1, mesh_axes=None):
    """(task, state, frozen, mesh) as the loop builds them, on the first `devices` devices."""
    mesh = make_mesh(mesh_axes or dict(data=devices, fsdp=1, tensor=1), jax.devices()[:devices])
    task = get_task(config.train.task)(config, load_tokenizer(base / "tokenizer.json"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        frozen = task.frozen_params(mesh)
        state, _ = create_train_state(
            task.model, make_optimizer(config.optim, 10), mesh, jax.random.key(0), init_fn=task.init_params
        )
        state = state.replace(params=task.initial_params(state.params, frozen))
    return task, state, frozen, mesh


@pytest.mark.parametrize("method", ["none", "lora"])
def test_dpo_starts_at_log_2_with_zero_kl(base_run, sentiment_data_dir, method):
    """The policy starts as the reference (a frozen copy, or the LoRA base with B = 0): every implicit
    reward is 0, the loss is log 2, and the sampled KL(policy || reference) is 0."""
    config = post_config("dpo", sentiment_data_dir, base_run)
    config.peft.update(method=method, rank=2)
    task, state, frozen, mesh = setup(config, base_run)
    with jax.set_mesh(mesh):
        batch = to_global(next(task.train_iterator(0, 1)), mesh)
        total, count, sums = jax.jit(task.loss)(state.params, frozen, batch, jax.random.key(0))
        np.testing.assert_allclose(float(total / count), math.log(2), rtol=1e-6)
        np.testing.assert_allclose(float(sums["margin"]), 0.0, atol=1e-5)
        out = task.evaluate(state.params, frozen)
    assert abs(out["eval_kl"]) < 1e-4 and out["eval_response_length"] == 6.0
    assert -1.0 <= out["eval_gold_reward"] <= 1.0


def test_reward_model_loss_is_bradley_terry_of_last_token_scores(base_run, sentiment_data_dir):
    config = post_config("reward", sentiment_data_dir, base_run)
    task, state, frozen, mesh = setup(config, base_run)
    assert "scalar_head" in state.params and "lm_head" not in state.params
    # The body starts as the base run's model; the score head keeps its fresh init (std 0.02, not the base's).
    base = load_run(base_run)
    for a, b in zip(jax.tree.leaves(state.params["block_0"]), jax.tree.leaves(base.params["block_0"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert 0 < float(np.std(np.asarray(state.params["scalar_head"]["kernel"]))) < 0.05
    batch = next(task.train_iterator(0, 1))
    with jax.set_mesh(mesh):
        total, count, sums = jax.jit(task.loss)(state.params, frozen, to_global(batch, mesh), None)
    # Reference: one forward per sequence, its score at its own last token.
    scores = np.zeros(batch["tokens"].shape[:2])
    for i in range(scores.shape[0]):
        for j in range(2):
            n = int(batch["segment_ids"][i, j].sum())
            tokens = jnp.asarray(batch["tokens"][i, j, :n])[None]
            scores[i, j] = task.model.apply({"params": state.params}, tokens, head="scalar")[0, -1]
    want = np.log1p(np.exp(-(scores[:, 0] - scores[:, 1])))
    np.testing.assert_allclose(float(total), want.sum(), rtol=1e-5)
    assert float(count) == len(want)
    np.testing.assert_allclose(float(sums["accuracy"]), np.sum(scores[:, 0] > scores[:, 1]), atol=1e-6)


def test_grpo_rollout_and_first_update(base_run, sentiment_data_dir):
    """Group-normalised advantages of the scored samples, zero KL at the start, and (ratio 1, advantages of
    mean 0 per group) a first policy-gradient loss of 0 whose gradient is not 0. The rollout source cuts
    the same rows into shuffled minibatches."""
    config = post_config("grpo", sentiment_data_dir, base_run)
    config.grpo.group_size, config.rl.rollout_prompts = 4, 4
    task, state, frozen, mesh = setup(config, base_run)
    with jax.set_mesh(mesh):
        prompts = task.prompt_set.prompts("train", 4)
        samples = sample(task.model, state.params, task.encode_prompts(prompts), task.rollout_sampling(),
                         jax.random.key(0), mesh=mesh)  # fmt: skip
        rows = [prompts[i] for i in np.asarray(samples.prompt_index)]
        total, _, texts = task.score(rows, samples, max_new_tokens=6)
        batch, stats = task.process_rollout(state.params, frozen, samples, jnp.asarray(total), 0.05)
        loss = lambda p: task.loss(p, frozen, batch, None)[0]  # noqa: E731
        value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
        # One update per rollout skips the old log-probs (ratio 1 by construction): the same first step.
        one_pass = {k: v for k, v in batch.items() if k != "old_logprobs"}
        grads_one = jax.jit(jax.grad(lambda p: task.loss(p, frozen, one_pass, None)[0]))(state.params)
        minibatches = task.batch_source(task.train_iterator(0, 1), mesh).rollout(state.params, frozen, 0)
    gold = np.array([task.prompt_set.language.gold_reward(t) for t in texts]).reshape(4, 4)
    np.testing.assert_allclose(total.reshape(4, 4), gold, rtol=1e-6)
    want = (gold - gold.mean(1, keepdims=True)) / (gold.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(batch["advantages"]).reshape(4, 4), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(batch["loss_mask"]).sum(axis=1), 6)
    assert abs(float(stats["kl"])) < 1e-5
    np.testing.assert_allclose(float(value), 0.0, atol=1e-5)
    assert float(optax.tree.norm(grads)) > 1e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads, grads_one)
    assert [m["tokens"].shape for m in minibatches] == [(8, 8 + 6)] * 2  # 16 rows / train.batch_size 8


def test_ppo_returns_are_the_score_with_gamma_and_lambda_1(base_run, sentiment_data_dir):
    """With no KL penalty and gamma = lambda = 1, GAE's return at every response token is the row's score,
    placed on its last response token; the advantages are returns minus the (aligned) values."""
    config = post_config("ppo", sentiment_data_dir, base_run)
    config.ppo.update(gamma=1.0, lam=1.0, whiten_advantages=False)
    task, state, frozen, mesh = setup(config, base_run)
    with jax.set_mesh(mesh):
        prompts = task.prompt_set.prompts("train", 4)
        samples = sample(task.model, state.params, task.encode_prompts(prompts), task.rollout_sampling(),
                         jax.random.key(0), mesh=mesh)  # fmt: skip
        scores = jnp.asarray([0.5, -1.0, 2.0, 0.0])
        batch, stats = task.process_rollout(state.params, frozen, samples, scores, 0.0)
    mask = np.asarray(batch["loss_mask"])
    returns, adv, values = (np.asarray(batch[k]) for k in ("returns", "advantages", "old_values"))
    for i in range(4):
        np.testing.assert_allclose(returns[i][mask[i]], float(scores[i]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(adv[i][mask[i]], returns[i][mask[i]] - values[i][mask[i]], rtol=1e-5, atol=1e-6)
    assert abs(float(stats["kl"])) < 1e-5


def test_sharded_rl_step_equals_the_single_device_step(base_run, sentiment_data_dir):
    """One GRPO rollout, then the same update on 1 device and on data x fsdp x tensor = 2 x 2 x 2."""
    config = post_config("grpo", sentiment_data_dir, base_run)
    config.optim.eps = 1.0  # Adam's first step ~ lr * g / eps: linear in g, not sign(g) (see test_sharding)
    task, state, frozen, mesh = setup(config, base_run)
    with jax.set_mesh(mesh):
        batch = jax.device_get(task.batch_source(task.train_iterator(0, 1), mesh).next_batch(state, frozen))
    results = []
    for devices, axes in ((1, None), (8, dict(data=2, fsdp=2, tensor=2))):
        task, state, frozen, mesh = setup(config, base_run, devices, axes)
        loss_fn = task.loss
        step = jax.jit(lambda s, b, f, fn=loss_fn: train_step(s, b, f, grad_accum_steps=1, loss_fn=fn,
                                                              learning_rate_fn=lambda _: 1e-2))  # fmt: skip
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
            new, metrics = step(state, to_global(batch, mesh), frozen)
        results.append((jax.device_get(new.params), jax.device_get(state.params), jax.device_get(metrics)))
    (p1, init, m1), (p8, _, m8) = results
    np.testing.assert_allclose(m8["loss"], m1["loss"], atol=1e-6)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(init), strict=True))
    assert moved > 1e-5
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7 + 1e-3 * moved)  # float32 reduction order, far below the update


# --- Bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,key,value,message",
    [
        ("dpo", "dpo.beta", 0.0, "dpo.beta"),
        ("dpo", "dpo.loss_type", "kto", "dpo.loss_type"),
        ("grpo", "grpo.group_size", 1, "grpo.group_size=1"),
        ("grpo", "train.steps", 3, "train.steps=3 must be a multiple"),
        ("ppo", "ppo.gamma", 1.5, "ppo.gamma"),
        ("ppo", "policy.max_new_tokens", 40, "policy.max_new_tokens=40"),
        ("ppo", "policy.rewards", "gold,nope", "unknown reward 'nope'"),
        ("ppo", "policy.rewards", "reward_model", "policy.reward_workdir"),
        ("reward", "preference.label_noise", 0.7, "preference.label_noise"),
        ("dpo", "post.base_workdir", "", "needs post.base_workdir"),
        ("grpo", "post.template", "html", "post.template='html'"),
    ],
)
def test_bad_post_configs_name_the_field(tmp_path, sentiment_data_dir, base_run, task, key, value, message):
    config = post_config(task, sentiment_data_dir, base_run)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_config(config)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_base_of_another_model_is_refused(tmp_path, sentiment_data_dir, base_run):
    config = post_config("dpo", sentiment_data_dir, base_run)
    config.model.d_model = 64
    with pytest.raises(ValueError, match=r"post.base_workdir=.*model.d_model: post.base_workdir 32, this run 64"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_preference_files_with_bad_lines_name_file_and_line(tmp_path, sentiment_data_dir, base_run):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": "b"}\n'
    )
    config = post_config("reward", sentiment_data_dir, base_run)
    config.preference.update(source=str(path), eval_source=str(path))
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: .*identical"):
        train(config, tmp_path / "run")


def test_rewards_that_return_nan_or_the_wrong_shape_are_named():
    class Const:
        def __init__(self, value):
            self.value = value

        def gold(self, prompt, response):
            return self.value

    inputs = RewardInputs(prompts=[None, None], texts=["a", "b"], lengths=np.array([1, 1]),
                          stopped=np.array([True, True]), max_new_tokens=4)  # fmt: skip
    total, parts = Rewards("gold:2,length_penalty", prompt_set=Const(0.5), template="plain")(inputs)
    np.testing.assert_allclose(total, [2 * 0.5 - 0.25] * 2)
    with pytest.raises(ValueError, match=r"reward 'gold' returned nan for response 0"):
        Rewards("gold", prompt_set=Const(float("nan")), template="plain")(inputs)
    rewards = Rewards("gold", prompt_set=Const(1.0), template="plain")
    rewards.fns["gold"] = lambda inputs: np.zeros(3)
    with pytest.raises(ValueError, match=r"reward 'gold' returned shape \(3,\) for 2 responses"):
        rewards(inputs)


def test_group_advantages_refuse_groups_of_one():
    with pytest.raises(ValueError, match="grpo.group_size"):
        adv_lib.group_advantages(jnp.zeros(4), 1)
