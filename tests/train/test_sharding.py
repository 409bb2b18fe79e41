"""The same train step on 1 device and on 8 fake CPU devices (fsdp=4 x tensor=2)."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from research.config import default_config, model_config
from research.models import DecoderLM
from research.train.sharding import LOGICAL_RULES, batch_sharding, make_mesh, mesh_shape
from research.train.state import create_train_state, learning_rate_schedule, make_optimizer
from research.train.step import train_step


def one_step(config, devices, batch):
    model = DecoderLM(model_config(config, 259))
    tx = make_optimizer(config.optim, 10)
    mesh = make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        state, shardings = create_train_state(model, tx, mesh, jax.random.key(0))
        initial = jax.device_get(state.params)
        step = jax.jit(
            functools.partial(
                train_step,
                grad_accum_steps=config.train.grad_accum_steps,
                learning_rate_fn=learning_rate_schedule(config.optim, 10),
            ),
            in_shardings=(shardings, batch_sharding(mesh)),
            donate_argnums=0,
        )
        state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
        kernel = state.params["block_0"]["attn"]["query"]
        return jax.device_get(metrics), jax.device_get(state.params), kernel.sharding.spec, initial


@pytest.fixture(scope="module")
def setup():
    c = default_config()
    c.model.update(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn="swiglu", norm="rmsnorm")
    c.data.seq_len = 32
    c.optim.warmup_steps = 0  # a real update on the first step
    # Adam's first step is ~lr * sign(g): for gradients near 0 it turns float32
    # reduction-order noise into O(lr) differences, testing rounding rather than
    # sharding. A large eps makes the update ~lr * g / eps, linear in the gradient.
    c.optim.eps = 1.0
    rng = np.random.default_rng(0)
    seg = np.repeat(np.array([[1] * 20 + [2] * 12]), 8, axis=0).astype(np.int32)
    batch = {
        "tokens": rng.integers(3, 259, (8, 32)).astype(np.int32),
        "segment_ids": seg,
        "positions": np.concatenate([np.arange(20), np.arange(12)])[None].repeat(8, 0).astype(np.int32),
    }
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c, batch, one_step(c, jax.devices()[:1], batch)


@pytest.mark.parametrize("mesh,accum", [((1, 4, 2), 1), ((2, 2, 2), 2)])
def test_sharded_step_equals_single_device(setup, mesh, accum):
    c, batch, (m1, p1, _, p0) = setup
    c = c.copy_and_resolve_references()
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    c.train.grad_accum_steps = accum
    m8, p8, spec, _ = one_step(c, jax.devices()[:8], batch)
    assert tuple(spec)[:2] == ("fsdp", "tensor")  # really sharded
    # float32 with a different reduction order: loss and grad norm agree to ~1e-6 relative.
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    # Updates are ~lr * g ~ 1e-5, their reduction-order noise far smaller; what is left
    # is rounding of the O(0.2) weights themselves (1 ulp = 1.5e-8): allow a few ulps,
    # still 100x below the size of the update.
    moved = 0.0
    for a, b, init in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), jax.tree.leaves(p0), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)
        moved = max(moved, float(np.abs(a - init).max()))
    assert moved > 1e-6  # the step did change the weights


def test_mesh_shape_errors():
    assert mesh_shape(dict(data=-1, fsdp=4, tensor=2), 8) == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}
    with pytest.raises(ValueError, match="8 are available"):
        mesh_shape(dict(data=3, fsdp=1, tensor=1), 8)
    with pytest.raises(ValueError, match="must divide"):
        mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
