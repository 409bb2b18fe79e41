"""Losses and the pure train/eval steps. Everything here is traced once under jax.jit.

A loss function has the signature `loss_fn(params, frozen, batch, rng) ->
(objective_sum, count, {metric: sum})` (see research/train/tasks.py); the
steps only divide by the batch's total count.
"""

import jax
import jax.numpy as jnp
import optax


def apply_with_aux(apply_fn, variables, *args, **kwargs):
    """model.apply that also returns what modules sowed: (outputs, aux_loss, metrics).

    aux_loss: the sum of everything sown into "losses" (already weighted by the
    module), or None if nothing was: known at trace time, since the sown
    tree's structure is static.
    metrics: {name: mean over the modules that sowed `name` into "metrics"}.
    """
    out, sown = apply_fn(variables, *args, mutable=["losses", "metrics"], **kwargs)
    sown_losses = jax.tree.leaves(sown.get("losses", {}))
    aux = sum(jnp.sum(x).astype(jnp.float32) for x in sown_losses) if sown_losses else None
    by_name: dict[str, list] = {}
    for path, value in jax.tree_util.tree_leaves_with_path(sown.get("metrics", {})):
        # Paths look like (block_1, mlp, name, 0): sow keeps a tuple per name.
        name = next(p.key for p in reversed(path) if isinstance(p, jax.tree_util.DictKey))
        by_name.setdefault(name, []).append(value)
    metrics = {k: sum(v) / len(v) for k, v in by_name.items()}
    return out, aux, metrics


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


def lm_token_losses(apply_fn, params, batch):
    """(cross-entropies [b, len] float32, weights [b, len], aux loss or None, sown metrics)."""
    logits, aux, metrics = apply_with_aux(
        apply_fn, {"params": params}, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"]
    )
    targets, weights = next_token_targets(batch)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets), weights, aux, metrics


def lm_loss_sums(params, apply_fn, batch):
    """(sum of token cross-entropies, number of target tokens) for one batch."""
    losses, weights, _, _ = lm_token_losses(apply_fn, params, batch)
    return jnp.sum(losses * weights), jnp.sum(weights)


def objective_sums(nll, count, aux, metrics, **extra_sums):
    """(objective, count, metric sums) in the loss-function convention, from a task's summed NLL.

    aux (per-unit, from apply_with_aux) joins the objective as aux * count; sown
    metrics are per-unit means, so they are logged as value * count; extra_sums
    (e.g. correct predictions) are sums already.
    """
    sums = {k: v * count for k, v in metrics.items()} | extra_sums
    if aux is None:
        return nll, count, sums
    sums.update(nll=nll, aux_loss=aux * count)
    return nll + aux * count, count, sums


def lm_loss(params, frozen, batch, rng, *, apply_fn):
    """Next-token loss in the loss-function convention; sown regularisers join the objective."""
    del frozen, rng
    losses, weights, aux, metrics = lm_token_losses(apply_fn, params, batch)
    return objective_sums(jnp.sum(losses * weights), jnp.sum(weights), aux, metrics)


def train_step(state, batch, frozen=None, *, grad_accum_steps: int, learning_rate_fn, loss_fn=None, seed: int = 0):
    """One optimizer update over `grad_accum_steps` micro-batches (a lax.scan).

    loss_fn: (params, frozen, batch, rng) -> (objective_sum, count, metric_sums);
    default: next-token LM with `state.apply_fn`. The objective is divided by
    the whole batch's count, so accumulating gradients changes memory use, not
    the maths. rng: derived from (seed, step, micro-batch), so a resumed run
    draws what an uninterrupted one would.
    """
    if loss_fn is None:
        loss_fn = lambda p, f, b, r: lm_loss(p, f, b, r, apply_fn=state.apply_fn)  # noqa: E731
    step_rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def micro(mb, i):
        def objective(params):
            total, count, sums = loss_fn(params, frozen, mb, jax.random.fold_in(step_rng, i))
            return total, (count, sums)

        (total, (count, sums)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return (total, count, sums), grads

    if grad_accum_steps == 1:
        (loss_sum, count, sums), grads = micro(batch, 0)
    else:
        split = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)
        shapes = jax.eval_shape(lambda: micro(jax.tree.map(lambda x: x[0], split), 0))

        def body(carry, xs):
            mb, i = xs
            return jax.tree.map(jnp.add, carry, micro(mb, i)), None

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        ((loss_sum, count, sums), grads), _ = jax.lax.scan(body, zeros, (split, jnp.arange(grad_accum_steps)))

    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    loss, grad_norm = loss_sum / count, optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": learning_rate_fn(state.step),
        "target_tokens": count,
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        **{k: v / count for k, v in sums.items()},
    }
    return skip_unless(finite, state.apply_gradients(grads=grads), state), metrics


def skip_unless(finite, updated, state):
    """`updated` where `finite`, else `state`'s params and optimizer state with `updated`'s step.

    A non-finite loss or gradient (an overflow, a bad batch) would poison the params and Adam's
    moments for good; skipping the update inside the step needs no host sync. The step counter
    still advances: it counts the batches consumed, so the next step draws fresh randomness and the
    loop's step and the state's stay equal.
    """
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731  fuses into the update
    return updated.replace(
        params=jax.tree.map(keep, updated.params, state.params),
        opt_state=jax.tree.map(keep, updated.opt_state, state.opt_state),
    )


def eval_step(params, batch, frozen=None, *, sums_fn):
    """sums_fn(params, frozen, batch) -> {"loss_sum", "count", ...}: summed by the caller over batches."""
    return sums_fn(params, frozen, batch)
