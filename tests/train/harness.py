"""One train step on a chosen set of devices, and the comparison of a sharded step with one device's.

Shared by the sharding, MoE and distillation tests (tests/train/test_sharding.py, tests/layers/test_moe.py,
tests/train/test_distill.py): the step is built as research.train.loop builds it, on the first N devices.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from research.config import model_config
from research.models import DecoderLM
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.sources import to_global
from research.train.state import create_train_state, learning_rate_schedule, make_optimizer
from research.train.step import train_step

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


def linear_first_update(optim) -> None:
    """A first AdamW update that is linear in the gradient and made of it alone.

    No warmup (a real update on step 1) and no weight decay (only gradients move the weights).
    Adam's first step is ~lr * sign(g): for gradients near 0 it turns float32 reduction-order noise
    into O(lr) differences, testing rounding rather than sharding; a large eps makes the update
    ~lr * g / eps instead.
    """
    optim.update(warmup_steps=0, weight_decay=0.0, eps=1.0)


class Step(NamedTuple):
    metrics: dict
    params: Any  # after the step, on the host
    initial: Any  # before the step, on the host
    query_spec: Any  # the sharding spec of block 0's trained query kernel
    frozen: Any  # the task's frozen tree as laid out on the mesh (None without a task)


def one_step(config, devices, batch, task=None) -> Step:
    """One train step on `devices` from the same init (key 0): an LM DecoderLM (byte vocabulary)
    without `task`, else the task's model, init, frozen tree and loss."""
    if task is None:
        model, init_fn, loss_fn = DecoderLM(model_config(config, 259)), None, None
    else:
        model, init_fn, loss_fn = task.model, task.init_params, task.loss
    tx = make_optimizer(config.optim, 10)
    mesh = make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        state, _ = create_train_state(model, tx, mesh, jax.random.key(0), init_fn=init_fn)
        frozen = None if task is None else task.frozen_params(mesh)
        initial = jax.device_get(state.params)
        step = jax.jit(
            functools.partial(
                train_step,
                grad_accum_steps=config.train.grad_accum_steps,
                learning_rate_fn=learning_rate_schedule(config.optim, 10),
                loss_fn=loss_fn,
            ),
            donate_argnums=0,
        )
        state, metrics = step(state, to_global(batch, mesh), frozen)
        spec = state.params["block_0"]["attn"]["query"].sharding.spec
        return Step(jax.device_get(metrics), jax.device_get(state.params), initial, spec, frozen)


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
