"""Per-token log-probabilities and entropies of a causal LM's forward pass, and masked reductions.

A forward pass over tokens [b, L] gives logits [b, L, V] where logits[:, t - 1]
predicts tokens[:, t]. Everything here re-aligns that to the token sequence:
out[:, t] belongs to token t, and out[:, 0] = 0 (the first token has no
prediction). Then a response `mask` [b, L] over the tokens applies unchanged to
log-probs, entropies, advantages and KL terms alike.

Log-probs are the gathered logit minus the logsumexp (no one-hot [b, L, V] and
no full log_softmax kept alive for the backward pass beyond what logsumexp
needs), in float32 whatever the logits' dtype.
"""

import jax
import jax.numpy as jnp


def _predicting_logits(logits, temperature):
    """logits[:, :-1] / T in float32: [b, L, V] -> [b, L - 1, V], row t - 1 predicts token t."""
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits[:, :-1].astype(jnp.float32) / temperature


def _shift_right(x):
    """[b, L - 1] -> [b, L] with a 0 in front, so column t belongs to token t."""
    return jnp.pad(x, ((0, 0), (1, 0)))


def token_logprobs(logits, tokens, *, temperature=1.0):
    """log p(tokens[:, t] | tokens[:, :t]) at temperature T: [b, L] float32, out[:, 0] = 0."""
    z = _predicting_logits(logits, temperature)  # [b, L-1, V]
    picked = jnp.take_along_axis(z, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]  # [b, L-1]
    return _shift_right(picked - jax.nn.logsumexp(z, axis=-1))


def token_entropy(logits, *, temperature=1.0):
    """Entropy of the distribution that predicted token t (softmax(logits[:, t-1] / T)): [b, L], out[:, 0] = 0.

    Logits of -inf (a banned token) contribute 0, not 0 * -inf = nan.
    """
    z = _predicting_logits(logits, temperature)  # [b, L-1, V]
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    return _shift_right(-jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1))


def masked_sum(x, mask, axis=None):
    """sum(x * mask) over `axis`; entries outside the mask are dropped, even if they are inf or nan.

    mask: bool or float (a float mask weighs the entries), broadcastable to x.
    """
    mask = jnp.asarray(mask)
    return jnp.sum(jnp.where(mask != 0, x * mask.astype(jnp.float32), 0.0), axis=axis)


def masked_mean(x, mask, axis=None):
    """masked_sum / sum(mask) over `axis`; 0 (never nan) where the mask is empty."""
    count = jnp.sum(jnp.broadcast_to(jnp.asarray(mask).astype(jnp.float32), jnp.shape(x)), axis=axis)
    total = masked_sum(x, mask, axis=axis)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def sequence_logprobs(logits, tokens, mask, *, temperature=1.0):
    """log p(masked tokens | everything before them) per row: [b] = sum_t token_logprobs * mask."""
    return masked_sum(token_logprobs(logits, tokens, temperature=temperature), mask, axis=-1)
