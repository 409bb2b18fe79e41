"""Preference and policy-gradient losses, per example or per token (the caller sums and normalises).

Bradley-Terry (reward modelling): P(chosen > rejected) = sigmoid(r_c - r_r),
loss = -log sigmoid(r_c - r_r) = softplus(r_r - r_c), which never overflows.

DPO (Rafailov et al., 2023) reads the policy's implicit reward
beta * (log pi(y|x) - log pi_ref(y|x)) off sequence log-probs, and applies
Bradley-Terry to it: with h = (pi_c - ref_c) - (pi_r - ref_r),

    sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
           = softplus(-beta h) + eps * beta h      (eps: label smoothing, cDPO)
    ipo:     (h - 1 / (2 beta))^2                  (Azar et al., 2023)

At policy == reference (h = 0) the sigmoid loss is log 2 and the IPO loss
1 / (4 beta^2). IPO regresses h onto a fixed margin instead of pushing it to
infinity; the paper's h uses length-averaged log-probs, so pass those for IPO
if that is what you want (this function takes whatever it is given).

PPO (Schulman et al., 2017): per token, -min(ratio A, clip(ratio, 1 +- eps) A).
The clipped term wins (and has zero gradient) exactly when the ratio has moved
past the trust region in the direction the advantage rewards.
"""

import jax
import jax.numpy as jnp

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def _win_rate(margin):
    """1.0 where margin > 0, 0.5 on ties, 0.0 otherwise (float32)."""
    return jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0)).astype(jnp.float32)


def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigmoid(r_chosen - r_rejected) per pair: [b] float32, computed as softplus(r_rejected - r_chosen)."""
    return jax.nn.softplus(jnp.asarray(r_rejected, jnp.float32) - jnp.asarray(r_chosen, jnp.float32))


def pair_accuracy(r_chosen, r_rejected):
    """[b] float32: 1.0 where the chosen response scores higher, 0.5 on ties, else 0."""
    return _win_rate(jnp.asarray(r_chosen, jnp.float32) - jnp.asarray(r_rejected, jnp.float32))


def check_dpo(beta, loss_type, label_smoothing):
    if beta <= 0:
        raise ValueError(f"dpo.beta must be > 0, got {beta}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo.loss_type must be one of {', '.join(DPO_LOSS_TYPES)}; got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type != "sigmoid" and label_smoothing != 0:
        raise ValueError(f"dpo.label_smoothing applies only to dpo.loss_type='sigmoid', got {loss_type!r}")


def dpo_loss(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, loss_type="sigmoid", label_smoothing=0.0
):
    """(losses [b], stats) from [b] sequence log-probs of the chosen/rejected responses.

    stats (each [b], gradient stopped): "chosen_reward" = beta * (policy_chosen -
    ref_chosen), "rejected_reward" likewise, "margin" = their difference, and
    "accuracy" = 1.0 where margin > 0 (0.5 on ties). The reference log-probs
    get no gradient.
    """
    check_dpo(beta, loss_type, label_smoothing)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    chosen = f32(policy_chosen) - jax.lax.stop_gradient(f32(ref_chosen))  # [b]
    rejected = f32(policy_rejected) - jax.lax.stop_gradient(f32(ref_rejected))  # [b]
    h = chosen - rejected
    if loss_type == "sigmoid":
        eps = label_smoothing
        losses = (1.0 - eps) * jax.nn.softplus(-beta * h) + eps * jax.nn.softplus(beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    chosen_reward = jax.lax.stop_gradient(beta * chosen)
    rejected_reward = jax.lax.stop_gradient(beta * rejected)
    margin = chosen_reward - rejected_reward
    stats = {
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "margin": margin,
        "accuracy": _win_rate(margin),
    }
    return losses, stats


def ppo_policy_loss(logprobs, old_logprobs, advantages, *, clip_eps):
    """PPO's clipped surrogate per token: (loss [b, L], clipped [b, L] float).

    logprobs: [b, L] under the current policy; old_logprobs: [b, L] under the
    policy that sampled the tokens; advantages: [b, L], or [b] for one
    advantage per sequence (GRPO). old_logprobs and advantages get no gradient.
    clipped: 1.0 where the clipped term is the active one (zero gradient), i.e.
    A > 0 and ratio > 1 + eps, or A < 0 and ratio < 1 - eps.
    """
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    logprobs = jnp.asarray(logprobs, jnp.float32)
    old_logprobs = jax.lax.stop_gradient(jnp.asarray(old_logprobs, jnp.float32))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    if adv.ndim == 1:
        adv = adv[:, None]  # [b, 1]: one advantage for every token of the row
    ratio = jnp.exp(logprobs - old_logprobs)  # [b, L]
    unclipped = ratio * adv
    clipped_term = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = -jnp.minimum(unclipped, clipped_term)
    clipped = ((adv > 0) & (ratio > 1.0 + clip_eps)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
    return loss, clipped.astype(jnp.float32)


def value_loss(values, old_values, returns, *, clip_eps):
    """Clipped value loss per token: (loss [b, L], clipped [b, L] float).

    0.5 * max((v - R)^2, (old_v + clip(v - old_v, -eps, eps) - R)^2); clip_eps
    None or 0: the plain 0.5 * (v - R)^2 (clipped is all 0). clipped: 1.0 where
    the clipped branch is strictly larger. old_values and returns get no gradient.
    """
    if clip_eps is not None and clip_eps < 0:
        raise ValueError(f"clip_eps must be >= 0 or None, got {clip_eps}")
    values = jnp.asarray(values, jnp.float32)
    old_values = jax.lax.stop_gradient(jnp.asarray(old_values, jnp.float32))
    returns = jax.lax.stop_gradient(jnp.asarray(returns, jnp.float32))
    unclipped_sq = (values - returns) ** 2
    if not clip_eps:
        return 0.5 * unclipped_sq, jnp.zeros_like(unclipped_sq)
    # = old_v + clip(v - old_v, -eps, eps), but exactly v inside the range (no rounding makes a tie look clipped).
    v_clipped = jnp.clip(values, old_values - clip_eps, old_values + clip_eps)
    clipped_sq = (v_clipped - returns) ** 2
    return 0.5 * jnp.maximum(unclipped_sq, clipped_sq), (clipped_sq > unclipped_sq).astype(jnp.float32)
