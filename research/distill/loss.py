"""Knowledge distillation loss (Hinton et al., 2015): match the teacher's softened distribution.

With temperature T, p_T = softmax(teacher_logits / T) and p_S = softmax(student_logits / T):

    soft = T^2 * KL(p_T || p_S) = T^2 * sum_v p_T(v) (log p_T(v) - log p_S(v))
    loss = alpha * soft + (1 - alpha) * cross_entropy(student_logits, hard_label)

Higher T exposes the teacher's "dark knowledge" (how it ranks the wrong tokens).
The gradient of the soft term in the student's logits is T * (p_S - p_T): it
shrinks like 1/T, and the T^2 factor keeps the soft and hard terms' gradient
scales comparable whatever T is. KL rather than cross-entropy against p_T: the
two differ by the teacher's entropy, a constant for the student, but KL is 0
exactly when the student matches, which makes it a readable metric.
"""

import jax
import jax.numpy as jnp
import optax


def soft_kl(student_logits, teacher_logits, temperature: float = 1.0):
    """KL(softmax(teacher / T) || softmax(student / T)) per position: [..., vocab] -> [...] float32."""
    log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    # xlogy-style: where p_T underflows to 0 its term is 0, not 0 * (-inf - x) = nan.
    p_t = jnp.exp(log_p_t)
    return jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)


def distillation_loss_sums(student_logits, teacher_logits, targets, weights, *, temperature: float, alpha: float):
    """(objective sum, count, {"kl": sum, "nll": sum}) over the weighted positions.

    student_logits, teacher_logits: [..., vocab]; targets (hard labels), weights: [...].
    Sums, not means (the train step divides by the batch's count). "kl" is the
    unscaled KL at temperature T; "nll" the student's hard-label cross-entropy at T = 1.
    """
    if temperature <= 0:
        raise ValueError(f"distill.temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill.alpha must be in [0, 1], got {alpha}")
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    weights = weights.astype(jnp.float32)
    kl = jnp.sum(soft_kl(student_logits, teacher_logits, temperature) * weights)
    nll = jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(student_logits.astype(jnp.float32), targets) * weights
    )
    objective = alpha * temperature**2 * kl + (1.0 - alpha) * nll
    return objective, jnp.sum(weights), {"kl": kl, "nll": nll}
