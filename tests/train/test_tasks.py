"""The task machinery: sown losses and metrics, loss functions under accumulation, init_from."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from research.train import checkpoint
from research.train.state import TrainState
from research.train.step import apply_with_aux, train_step
from research.train.tasks import Task, get_task, list_tasks


class Sowing(nn.Module):
    scale: float

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(3, name="dense")(x)
        self.sow("losses", "penalty", self.scale * jnp.mean(y**2))
        self.sow("metrics", "load", jnp.array([self.scale, 1.0]))
        return y


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Sowing(1.0, name="a")(x) + Sowing(3.0, name="b")(x)


def test_apply_with_aux_sums_losses_and_averages_metrics_by_name():
    net, x = Net(), jnp.ones((2, 4))
    params = net.init(jax.random.key(0), x)["params"]
    out, aux, metrics = apply_with_aux(net.apply, {"params": params}, x)
    ya = Sowing(1.0).apply({"params": params["a"]}, x, mutable=["losses", "metrics"])[0]
    yb = Sowing(3.0).apply({"params": params["b"]}, x, mutable=["losses", "metrics"])[0]
    np.testing.assert_allclose(out, ya + yb, rtol=1e-6)
    np.testing.assert_allclose(aux, 1.0 * jnp.mean(ya**2) + 3.0 * jnp.mean(yb**2), rtol=1e-6)
    np.testing.assert_allclose(metrics["load"], [2.0, 1.0])


def test_apply_with_aux_without_sown_losses_returns_none():
    dense, x = nn.Dense(2), jnp.ones((1, 3))
    params = dense.init(jax.random.key(0), x)["params"]
    _, aux, metrics = apply_with_aux(dense.apply, {"params": params}, x)
    assert aux is None and metrics == {}


def regression_loss(params, frozen, batch, rng, *, apply_fn):
    """A loss in the task convention with a random term, to check rng plumbing and accumulation."""
    pred = apply_fn({"params": params}, batch["x"])[:, 0]
    noise = jax.random.normal(rng, ()) * 0.0  # the rng must be a valid key; its value must not matter here
    err = (pred - batch["y"]) ** 2 + noise
    count = jnp.asarray(batch["y"].shape[0], jnp.float32)
    return jnp.sum(err), count, {"abs_err": jnp.sum(jnp.abs(pred - batch["y"]))}


def test_train_step_with_loss_fn_accumulation_equals_one_batch():
    dense = nn.Dense(1)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=8).astype(np.float32)}
    params = dense.init(jax.random.key(0), batch["x"])["params"]
    state = TrainState.create(apply_fn=dense.apply, params=params, tx=optax.sgd(0.1))
    loss_fn = functools.partial(regression_loss, apply_fn=dense.apply)
    outs = [
        train_step(state, batch, grad_accum_steps=k, learning_rate_fn=lambda s: 0.1, loss_fn=loss_fn) for k in (1, 4)
    ]
    (s1, m1), (s4, m4) = outs
    pred = dense.apply({"params": params}, batch["x"])[:, 0]
    np.testing.assert_allclose(m1["loss"], np.mean((pred - batch["y"]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(m1["abs_err"], np.mean(np.abs(pred - batch["y"])), rtol=1e-6)
    for key in ("loss", "abs_err", "grad_norm"):
        np.testing.assert_allclose(m4[key], m1[key], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s4.params, s1.params)


def test_task_registry_names_the_choices():
    assert "lm" in list_tasks() and get_task("lm") is Task
    with pytest.raises(ValueError, match="train.task='nope'.*lm"):
        get_task("nope")


def _save_params(workdir, params):
    manager = checkpoint.make_manager(workdir, keep=1, async_checkpointing=False)
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params, "step": 3})))
    manager.wait_until_finished()
    manager.close()


def test_init_from_loads_shared_paths_and_keeps_new_ones(tmp_path):
    saved = {"body": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "old_head": jnp.ones(2)}
    _save_params(tmp_path / "base", saved)
    fresh = {"body": {"kernel": jnp.zeros((2, 3))}, "new_head": jnp.full(4, 7.0)}
    out = checkpoint.init_from(tmp_path / "base", fresh)
    np.testing.assert_array_equal(out["body"]["kernel"], saved["body"]["kernel"])
    np.testing.assert_array_equal(out["new_head"], fresh["new_head"])
    assert set(out) == {"body", "new_head"}

    with pytest.raises(ValueError, match=r"\['body'\]\['kernel'\] has shape \(2, 3\)"):
        checkpoint.init_from(tmp_path / "base", {"body": {"kernel": jnp.zeros((3, 3))}})
    with pytest.raises(ValueError, match="shares no parameter path"):
        checkpoint.init_from(tmp_path / "base", {"other": jnp.zeros(2)})
    with pytest.raises(ValueError, match="holds no checkpoint"):
        checkpoint.init_from(tmp_path / "empty", fresh)


def test_batch_leaves_are_sharded_by_rank():
    """Rewards [b], tokens [b, L] and pairs [b, 2, L] all split their rows over the batch axes."""
    from research.train.sharding import make_mesh
    from research.train.sources import to_global

    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    batch = {"reward": np.arange(8.0), "tokens": np.zeros((8, 5), np.int32), "pairs": np.zeros((8, 2, 5), np.int32)}
    out = to_global(batch, mesh)
    for key, value in out.items():
        assert value.sharding.shard_shape(value.shape) == (2, *batch[key].shape[1:]), key  # 8 rows / (data*fsdp)
        np.testing.assert_array_equal(np.asarray(value), batch[key])
