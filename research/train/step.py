"""Loss and the pure train/eval steps. Everything here is traced once under jax.jit."""

import jax
import jax.numpy as jnp
import optax


def next_token_targets(batch):
    """Targets are the next token of the same packed segment.

    The model sees all seq_len tokens (shapes stay powers of two); the last
    token of each segment, padding, and the last column get weight 0.
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    targets = jnp.roll(tokens, -1, axis=1)
    next_seg = jnp.roll(seg, -1, axis=1)
    weights = (seg == next_seg) & (seg != 0)
    weights = weights.at[:, -1].set(False)
    return targets, weights.astype(jnp.float32)


def lm_loss_sums(params, apply_fn, batch):
    """(sum of token cross-entropies, number of target tokens) for one batch."""
    logits = apply_fn(
        {"params": params}, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"]
    )
    targets, weights = next_token_targets(batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # float32
    return jnp.sum(losses * weights), jnp.sum(weights)


def train_step(state, batch, *, grad_accum_steps: int, learning_rate_fn):
    """One optimizer update over `grad_accum_steps` micro-batches (a lax.scan).

    The loss is the mean over every target token of the whole batch, so
    accumulating gradients changes memory use, not the maths.
    """

    def micro(mb):
        return jax.value_and_grad(lm_loss_sums, has_aux=True)(state.params, state.apply_fn, mb)

    if grad_accum_steps == 1:
        (loss_sum, count), grads = micro(batch)
    else:
        split = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

        def body(carry, mb):
            (loss_sum, count), grads = micro(mb)
            return jax.tree.map(jnp.add, carry, ((loss_sum, count), grads)), None

        zeros = ((jnp.zeros(()), jnp.zeros(())), jax.tree.map(jnp.zeros_like, state.params))
        ((loss_sum, count), grads), _ = jax.lax.scan(body, zeros, split)

    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    metrics = {
        "loss": loss_sum / count,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": learning_rate_fn(state.step),
        "target_tokens": count,
    }
    return state.apply_gradients(grads=grads), metrics


def eval_step(params, batch, *, apply_fn):
    loss_sum, count = lm_loss_sums(params, apply_fn, batch)
    return {"loss_sum": loss_sum, "count": count}
