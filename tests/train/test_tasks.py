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
    """A weighted loss in the task convention whose value depends on the rng: one noise draw per row."""
    pred = apply_fn({"params": params}, batch["x"])[:, 0]
    err = pred - batch["y"] + jax.random.normal(rng, batch["y"].shape)
    w = batch["w"]
    return jnp.sum(w * err**2), jnp.sum(w), {"abs_err": jnp.sum(w * jnp.abs(pred - batch["y"]))}


@pytest.mark.parametrize("accum", [1, 4])
def test_train_step_with_loss_fn_accumulation_matches_reference(accum):
    """Accumulated loss, metrics, grads and update against a float64 reference built by hand.

    The row weights give the 4 micro-batches different target counts (2, 1, 2, 1), so a mean
    of micro-batch means differs from the whole batch's mean; the loss draws noise from its
    rng, so every micro-batch must get its own key fold_in(fold_in(key(seed), step), i).
    """
    dense, seed, step, lr = nn.Dense(1), 7, 3, 0.1
    rng = np.random.default_rng(0)
    w = np.array([1, 1, 1, 0, 1, 1, 0, 1], np.float32)
    batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=8).astype(np.float32), "w": w}
    params = dense.init(jax.random.key(0), batch["x"])["params"]
    state = TrainState.create(apply_fn=dense.apply, params=params, tx=optax.sgd(lr)).replace(step=step)
    loss_fn = functools.partial(regression_loss, apply_fn=dense.apply)
    new, m = train_step(state, batch, grad_accum_steps=accum, learning_rate_fn=lambda s: lr, loss_fn=loss_fn, seed=seed)

    # Reference: per micro-batch i, noise from its key; pred = x @ k + b, so the gradient of
    # sum(w r^2) is (x^T (2 w r), sum(2 w r)); everything is divided by the total count sum(w).
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    rows = 8 // accum
    noise = np.concatenate(
        [np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), (rows,)), np.float64) for i in range(accum)]
    )
    x, y, w = (np.asarray(batch[k], np.float64) for k in ("x", "y", "w"))
    kernel, bias = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64)
    pred = x @ kernel[:, 0] + bias[0]
    r, count = pred - y + noise, w.sum()
    g_kernel, g_bias = x.T @ (2 * w * r) / count, np.sum(2 * w * r) / count
    # float32 sums of 8 O(1) terms vs float64: agreement to ~1e-6 relative.
    np.testing.assert_allclose(m["loss"], np.sum(w * r**2) / count, rtol=1e-5)
    np.testing.assert_allclose(m["abs_err"], np.sum(w * np.abs(pred - y)) / count, rtol=1e-5)
    np.testing.assert_allclose(m["target_tokens"], count)
    np.testing.assert_allclose(m["grad_norm"], np.sqrt(np.sum(g_kernel**2) + g_bias**2), rtol=1e-5)
    # The SGD update lr * g is O(0.1); atol: a few float32 ulps of the O(1) weights.
    np.testing.assert_allclose(new.params["kernel"][:, 0], kernel[:, 0] - lr * g_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["bias"], [bias[0] - lr * g_bias], rtol=1e-5, atol=1e-6)
    assert int(new.step) == step + 1


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
