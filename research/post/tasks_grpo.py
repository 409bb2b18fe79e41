"""The "grpo" task: Group Relative Policy Optimization (DeepSeekMath), RL without a value model.

    python -m research.sweep --config experiments/grpo_verifiable.py --workdir DIR

Each rollout samples grpo.group_size responses per prompt; a response's advantage
is its reward normalised within its group, (r - mean) / (std + eps) (std with
ddof 1; grpo.normalize_std=False keeps r - mean, as Dr. GRPO). The loss per
response token is the clipped ratio objective with that advantage plus
rl.kl_coef times the k3 estimate of KL(policy || reference),
exp(ref - logp) - (ref - logp) - 1, averaged per response then over responses
(grpo.loss_aggregation="sequence", the paper's) or over all response tokens
("token", DAPO's). Rewards come from the registry (policy.rewards), e.g. the
exact-match verifier of the instruction tasks and a format bonus.

Logged per step beside the rollout metrics (research/post/rollout.py): the
policy-gradient loss, kl (k3, per token), entropy, clip_fraction, and the
fraction of groups whose rewards all tie (no signal).
"""

import functools

import jax
import jax.numpy as jnp

from research.post import advantages as adv_lib
from research.post import kl as kl_lib
from research.post import losses
from research.post.logprobs import masked_sum, token_entropy, token_logprobs
from research.post.policy import POLICY_SECTION, POST_SECTION, SamplingTask
from research.post.rollout import RL_SECTION, RLTask, response_batch
from research.train.tasks import register_task

GRPO_SECTION = dict(
    group_size=8,  # G: samples per prompt, whose rewards are compared (>= 2)
    normalize_std=True,  # divide by the group's std (False: Dr. GRPO's mean-centred advantages)
    loss_aggregation="sequence",  # sequence: mean over each response's tokens, then over responses | token
    kl_estimator="k3",  # k1 | k2 | k3 (research/post/kl.py)
)
AGGREGATIONS = ("sequence", "token")


@register_task("grpo")
class GRPOTask(RLTask, SamplingTask):
    """GRPO; see the module docstring."""

    config_sections = {"post": POST_SECTION, "policy": POLICY_SECTION, "rl": RL_SECTION, "grpo": GRPO_SECTION}
    resume_must_match = ("peft", "quant", "post", "policy", "rl", "grpo")
    samples_per_prompt_key = "grpo.group_size"

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        g = config.grpo
        if g.group_size < 2:
            raise ValueError(f"grpo.group_size={g.group_size} must be >= 2: with one sample every advantage is 0")
        if g.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_aggregation={g.loss_aggregation!r}; choose one of {list(AGGREGATIONS)}")
        if g.kl_estimator not in kl_lib.KL_KINDS:
            raise ValueError(f"grpo.kl_estimator={g.kl_estimator!r}; choose one of {list(kl_lib.KL_KINDS)}")
        cls.check_rollout_config(config)

    def process_rollout(self, params, frozen, samples, rewards, kl_coef):
        del kl_coef  # the KL is in the loss, at rl.kl_coef
        return _process(self, params, frozen, samples, rewards)

    def _logprobs(self, params, frozen, batch, rng=None):
        logits = self.apply_policy(params, frozen, batch, rng=rng)
        t = self.config.policy.temperature
        return logits, token_logprobs(logits, batch["tokens"], temperature=t)

    def loss(self, params, frozen, batch, rng):
        r, g = self.config.rl, self.config.grpo
        logits, logp = self._logprobs(params, frozen, batch, rng)
        mask = batch["loss_mask"].astype(jnp.float32)
        # One update per rollout: the policy that sampled is the one being updated, ratio 1 (TRL's shortcut).
        old = batch["old_logprobs"] if "old_logprobs" in batch else jax.lax.stop_gradient(logp)
        pg, clipped = losses.ppo_policy_loss(logp, old, batch["advantages"], clip_eps=r.clip_eps)
        kl = kl_lib.kl_per_token(logp, batch["ref_logprobs"], kind=g.kl_estimator)
        entropy = token_entropy(logits, temperature=self.config.policy.temperature)
        per_token = {"pg_loss": pg, "kl": kl, "entropy": entropy, "clip_fraction": clipped}
        if g.loss_aggregation == "sequence":  # each response weighs the same, whatever its length
            weights = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
            count = jnp.sum(mask.sum(axis=1) > 0).astype(jnp.float32)
        else:
            weights, count = mask, jnp.sum(mask)
        sums = {k: masked_sum(v * weights, mask) for k, v in per_token.items()}
        objective = sums["pg_loss"] + r.kl_coef * sums["kl"]
        return objective, count, sums


@functools.partial(jax.jit, static_argnames=("task",))
def _process(task, params, frozen, samples, rewards):
    """The rollout's training rows: old (if several updates share the rollout) and reference log-probs,
    group-normalised advantages."""
    g, temperature = task.config.grpo, task.config.policy.temperature
    batch = response_batch(samples)
    ref = token_logprobs(task.reference_logits(frozen, batch), batch["tokens"], temperature=temperature)
    mask = batch["loss_mask"].astype(jnp.float32)
    batch.update(
        ref_logprobs=ref,
        advantages=adv_lib.group_advantages(rewards, g.group_size, normalize_std=g.normalize_std),
    )
    if task.updates_per_rollout() > 1:  # later updates need the sampling policy's log-probs for the ratio
        batch["old_logprobs"] = task._logprobs(params, frozen, batch)[1]
    groups = rewards.reshape(-1, g.group_size)
    stats = {
        # Per sequence, k1, at the sampling temperature; the sampler's log-probs are the policy's (within
        # float32 summation order, tests/decode/test_sampler.py) when no top-k/top-p filter is set.
        "kl": jnp.mean(jnp.sum((samples.logprobs - ref) * mask, axis=1)),
        "tied_groups": jnp.mean(jnp.all(groups == groups[:, :1], axis=1).astype(jnp.float32)),
    }
    return batch, stats
