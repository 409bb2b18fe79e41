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


# Rows of 32 with 0..26 padding tokens and two segments each: row r has 32 - pad - 2 targets, so
# the halves a 2-step accumulation splits the batch into hold 108 and 40 targets.
PADS = [0, 2, 4, 6, 14, 18, 22, 26]


def ragged_batch(seed=0):
    """Rows with different padding and target counts, so micro-batches differ (see PADS)."""
    seg, pos = [], []
    for pad in PADS:
        n = 32 - pad
        first = 2 * n // 3
        seg.append([1] * first + [2] * (n - first) + [0] * pad)
        pos.append(list(range(first)) + list(range(n - first)) + [0] * pad)
    seg = np.array(seg, np.int32)
    tokens = np.where(seg > 0, np.random.default_rng(seed).integers(3, 259, seg.shape), 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": np.array(pos, np.int32)}


@pytest.fixture(scope="module")
def setup():
    c = default_config()
    c.model.update(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn="swiglu", norm="rmsnorm")
    c.data.seq_len = 32
    c.optim.warmup_steps = 0  # a real update on the first step
    c.optim.weight_decay = 0.0  # only gradients move the weights
    # Adam's first step is ~lr * sign(g): for gradients near 0 it turns float32
    # reduction-order noise into O(lr) differences, testing rounding rather than
    # sharding. A large eps makes the update ~lr * g / eps, linear in the gradient.
    c.optim.eps = 1.0
    batch = ragged_batch()
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c, batch, one_step(c, jax.devices()[:1], batch)


def assert_same_update(p1, p8, p0):
    """The sharded update p8 - p0 equals the single-device one p1 - p0 relative to its size, per leaf.

    Updates are ~lr * g ~ 1e-5 per weight; p - p0 carries the rounding of the O(0.2-4) weights
    (1 ulp = 1.5e-8 to 5e-7), which is up to ~1e-4 of a leaf's update norm here, and float32
    reduction-order noise in g is ~1e-6 relative: 1e-3 leaves a margin and still fails any
    change of the gradient's scale or content (e.g. a wrongly normalised micro-batch).
    """
    moved = 0.0
    flat1, flat8, flat0 = (jax.tree_util.tree_leaves_with_path(p) for p in (p1, p8, p0))
    for (path, a), (_, b), (_, init) in zip(flat1, flat8, flat0, strict=True):
        u1, u8 = np.asarray(a, np.float64) - init, np.asarray(b, np.float64) - init
        size, name = np.linalg.norm(u1), jax.tree_util.keystr(path)
        assert size > 0, name  # every leaf got a gradient (no weight decay to fake it)
        assert np.linalg.norm(u8 - u1) <= 1e-3 * size, (name, np.linalg.norm(u8 - u1) / size)
        moved = max(moved, float(np.abs(u1).max()))
    assert moved > 1e-6  # a real step, far above the weights' rounding


@pytest.mark.parametrize("mesh,accum", [((1, 4, 2), 1), ((2, 2, 2), 2)])
def test_sharded_step_equals_single_device(setup, mesh, accum):
    c, batch, (m1, p1, _, p0) = setup
    c = c.copy_and_resolve_references()
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    c.train.grad_accum_steps = accum
    m8, p8, spec, _ = one_step(c, jax.devices()[:8], batch)
    assert tuple(spec)[:2] == ("fsdp", "tensor")  # really sharded
    assert m1["target_tokens"] == m8["target_tokens"] == sum(32 - pad - 2 for pad in PADS)
    # float32 with a different reduction order: loss and grad norm agree to ~1e-6 relative.
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    assert_same_update(p1, p8, p0)


def test_mesh_shape_errors():
    assert mesh_shape(dict(data=-1, fsdp=4, tensor=2), 8) == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}
    with pytest.raises(ValueError, match="8 are available"):
        mesh_shape(dict(data=3, fsdp=1, tensor=1), 8)
    with pytest.raises(ValueError, match="must divide"):
        mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
