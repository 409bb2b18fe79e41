"""Advantage estimates for policy-gradient RL on token sequences.

GAE (Schulman et al., 2016) runs backwards over each row's response tokens
only (the masked positions): with "next" the next masked position,

    delta_t = r_t + gamma * V_next - V_t,    A_t = delta_t + gamma * lam * A_next,

and V = A = 0 after a row's last response token (the episode ends there). A
reverse lax.scan over L carries (V_next, A_next) and passes it through masked-out
positions unchanged, so prompts and padding at any offset are skipped.

GRPO (Shao et al., 2024) needs no critic: each prompt gets `group_size`
sampled responses, and a response's advantage is its reward standardised
within its group. Dr. GRPO (Liu et al., 2025) drops the division by the
group's std, which otherwise up-weights groups whose rewards barely differ.
"""

import jax
import jax.numpy as jnp

from research.post.logprobs import masked_mean


def gae(rewards, values, mask, *, gamma, lam):
    """(advantages [b, L], returns [b, L] = advantages + values), both 0 outside the mask, gradient stopped.

    rewards, values, mask: [b, L]; only masked positions take part (see the module docstring).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    keep = jnp.asarray(mask) != 0  # [b, L]

    def step(carry, xs):
        next_value, next_adv = carry  # [b], [b]
        r, v, m = xs
        adv = r + gamma * next_value - v + gamma * lam * next_adv
        carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv))
        return carry, jnp.where(m, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
    xs = (rewards.T, values.T, keep.T)  # each [L, b]
    _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
    adv = jax.lax.stop_gradient(adv.T)  # [b, L]
    returns = jnp.where(keep, adv + jax.lax.stop_gradient(values), 0.0)
    return adv, returns


def _masked_var(x, mask):
    """Population variance (ddof 0) over the masked entries; 0 for an empty mask."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x, mask, *, shift_mean=True, eps=1e-8):
    """(x - mean) / sqrt(var + eps) over the masked entries (population variance); 0 outside the mask.

    shift_mean=False adds the mean back (rescale only), as is usual for rewards.
    """
    x = jnp.asarray(x, jnp.float32)
    keep = jnp.asarray(mask) != 0
    mean = masked_mean(x, keep)
    out = (x - mean) * jax.lax.rsqrt(_masked_var(x, keep) + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(keep, out, 0.0)


def group_advantages(rewards, group_size, *, eps=1e-6, normalize_std=True):
    """GRPO advantages: [n] = (r - group mean) / (group std + eps), std with ddof=1.

    rewards: [n], n = num_groups * group_size, a group's rows contiguous (row =
    group * group_size + i). normalize_std=False: r - group mean (Dr. GRPO).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    n = rewards.shape[0]
    if group_size < 2:
        raise ValueError(f"grpo.group_size must be >= 2 (a group of one has advantage 0), got {group_size}")
    if n % group_size:
        raise ValueError(f"grpo.group_size={group_size} must divide the number of rewards, {n}")
    grouped = rewards.reshape(n // group_size, group_size)  # [groups, group_size]
    centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    if normalize_std:
        centred = centred / (jnp.std(grouped, axis=1, keepdims=True, ddof=1) + eps)
    return centred.reshape(n)


def explained_variance(values, returns, mask):
    """Scalar 1 - Var[returns - values] / Var[returns] over the masked entries.

    1 is a perfect critic, 0 no better than a constant, negative worse. Where
    Var[returns] is 0 (including an empty mask) the ratio is undefined and the
    result is 0.
    """
    values = jnp.asarray(values, jnp.float32)
    returns = jnp.asarray(returns, jnp.float32)
    keep = jnp.asarray(mask) != 0
    var_returns = _masked_var(returns, keep)
    var_residual = _masked_var(returns - values, keep)
    ok = var_returns > 0
    return jnp.where(ok, 1.0 - var_residual / jnp.where(ok, var_returns, 1.0), 0.0)
