"""Optimizer and train state, created directly in their shardings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from research.models import init_params
from research.train.sharding import logical_shardings, strip_boxes


class TrainState(train_state.TrainState):
    """params, opt_state and step; `apply_fn` is the model's apply."""


def learning_rate_schedule(optim, steps: int):
    """Linear warmup to the peak, cosine decay to min_lr_ratio * peak at the last step."""
    warmup = min(optim.warmup_steps, max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=optim.learning_rate * optim.min_lr_ratio,
    )


def make_optimizer(optim, steps: int) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; no weight decay on vectors (norm scales, biases)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(
            learning_rate_schedule(optim, steps),
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        ),
    )


def _init_fn(model, tx, init_fn):
    init_fn = init_fn or (lambda rng: init_params(model, rng))

    def init(rng):
        return TrainState.create(apply_fn=model.apply, params=init_fn(rng), tx=tx)

    return init


def state_shapes(model, tx, mesh, *, init_fn=None):
    """(abstract state carrying shardings, shardings), allocating nothing: jax.eval_shape only.

    init_fn: rng -> boxed params (a task's `init_params`); default `init_params(model, rng)`.
    The abstract state is what orbax restores into.
    """
    boxed = jax.eval_shape(_init_fn(model, tx, init_fn), jax.random.key(0))
    shardings = logical_shardings(boxed, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), strip_boxes(boxed), shardings
    )
    return abstract, shardings


def create_train_state(model, tx, mesh, rng, *, init_fn=None):
    """Returns (state, shardings); the state is born sharded, never whole on one device."""
    _, shardings = state_shapes(model, tx, mesh, init_fn=init_fn)
    state = jax.jit(lambda r: nn.unbox(_init_fn(model, tx, init_fn)(r)), out_shardings=shardings)(rng)
    return state, shardings


def count_params(params) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(params))
