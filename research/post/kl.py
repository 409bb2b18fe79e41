"""KL(policy || reference) estimated per token from the policy's own samples, and the adaptive KL coefficient.

With x ~ pi and r = pi_ref(x) / pi(x) (Schulman, "Approximating KL Divergence", 2020):

    k1 = -log r = logp - ref_logp              unbiased, high variance, can be negative
    k2 = (log r)^2 / 2                         biased, low variance, >= 0
    k3 = (r - 1) - log r                       unbiased, low variance, >= 0

E_pi[k3] = KL because E_pi[r] = 1. k3 is computed as expm1(log r) - log r,
accurate when the policy is close to the reference.

The adaptive controller (Ziegler et al., 2019) nudges the KL penalty's
coefficient towards a target KL, by at most 20% per horizon's worth of steps.
"""

import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")


def kl_per_token(logprobs, ref_logprobs, kind="k1"):
    """Per-token estimate of KL(pi || pi_ref) for tokens sampled from pi: same shape as logprobs, float32."""
    if kind not in KL_KINDS:
        raise ValueError(f"kl kind must be one of {', '.join(KL_KINDS)}; got {kind!r}")
    log_ratio = jnp.asarray(ref_logprobs, jnp.float32) - jnp.asarray(logprobs, jnp.float32)  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return jnp.maximum(jnp.expm1(log_ratio) - log_ratio, 0.0)


def update_kl_coef(coef, measured_kl, *, target, horizon, n_steps):
    """The next KL coefficient: coef * (1 + clip(measured_kl / target - 1, -0.2, 0.2) * n_steps / horizon).

    Host-side Python floats (measured_kl may be a 0-d array; it is converted).
    """
    if target <= 0:
        raise ValueError(f"ppo.kl_target must be > 0, got {target}")
    if horizon <= 0:
        raise ValueError(f"ppo.kl_horizon must be > 0, got {horizon}")
    error = min(max(float(measured_kl) / target - 1.0, -0.2), 0.2)
    return float(coef) * (1.0 + error * n_steps / horizon)
