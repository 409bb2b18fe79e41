"""The "ppo" task: RLHF with PPO (Ziegler et al. 2019, Ouyang et al. 2022), policy plus value head.

    python -m research.sweep --config experiments/preference_frontier.py --workdir DIR

Each rollout samples ppo.samples_per_prompt responses per prompt and scores
them (policy.rewards: a learned reward model, `reward_model`, or any reward
function, e.g. the gold reward). The per-token reward is the KL penalty
-beta (log pi_old - log ref) on every response token, plus the score on the
last one; beta is rl.kl_coef, or adapted after each rollout towards a target KL
(ppo.adaptive_kl, Ziegler et al.'s controller, kept in the checkpoint). The
value head (DecoderLM head "scalar", on the policy's own body, fresh at the
start) gives V; GAE(gamma, lambda) the advantages (whitened over the rollout)
and returns. The loss per response token is the clipped ratio objective,
plus ppo.vf_coef times the clipped value loss, minus ppo.entropy_coef times
the entropy, averaged over response tokens; rl.epochs passes of minibatches per
rollout.

Logged per step beside the rollout metrics (research/post/rollout.py): pg_loss,
value_loss, entropy, clip_fraction, value_clip_fraction, approx_kl (old vs new
policy); per rollout: explained_variance of the values, mean value and return.
"""

import functools

import jax
import jax.numpy as jnp

from research.post import advantages as adv_lib
from research.post import kl as kl_lib
from research.post import losses
from research.post.logprobs import masked_sum, token_entropy, token_logprobs
from research.post.policy import POLICY_SECTION, POST_SECTION, SamplingTask
from research.post.rollout import RL_SECTION, RLTask, response_batch, shift_values
from research.train.tasks import register_task

PPO_SECTION = dict(
    samples_per_prompt=1,
    gamma=1.0,  # discount over response tokens
    lam=0.95,  # GAE lambda
    vf_coef=0.1,  # weight of the value loss
    value_clip=0.2,  # clip of the value update around the rollout's values (0: unclipped)
    entropy_coef=0.0,  # weight of the entropy bonus
    whiten_advantages=True,
    adaptive_kl=False,  # adapt rl.kl_coef towards ppo.kl_target after each rollout
    kl_target=6.0,  # nats per sequence
    kl_horizon=10_000,  # the controller's horizon, in samples
)


@register_task("ppo")
class PPOTask(RLTask, SamplingTask):
    """PPO; see the module docstring."""

    config_sections = {"post": POST_SECTION, "policy": POLICY_SECTION, "rl": RL_SECTION, "ppo": PPO_SECTION}
    resume_must_match = ("peft", "quant", "post", "policy", "rl", "ppo")
    samples_per_prompt_key = "ppo.samples_per_prompt"
    model_heads = ("logits", "scalar")  # the value head shares the policy's body

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        p = config.ppo
        if p.samples_per_prompt < 1:
            raise ValueError(f"ppo.samples_per_prompt={p.samples_per_prompt} must be >= 1")
        for key in ("gamma", "lam"):
            if not 0.0 <= p[key] <= 1.0:
                raise ValueError(f"ppo.{key}={p[key]} must be in [0, 1]")
        for key in ("vf_coef", "value_clip", "entropy_coef"):
            if p[key] < 0:
                raise ValueError(f"ppo.{key}={p[key]} must be >= 0")
        if p.adaptive_kl:
            kl_lib.update_kl_coef(1.0, 1.0, target=p.kl_target, horizon=p.kl_horizon, n_steps=1)  # names bad values
        cls.check_rollout_config(config)

    def next_kl_coef(self, coef: float, measured_kl: float) -> float:
        p = self.config.ppo
        if not p.adaptive_kl:
            return coef
        n = self.config.rl.rollout_prompts * p.samples_per_prompt
        return kl_lib.update_kl_coef(coef, measured_kl, target=p.kl_target, horizon=p.kl_horizon, n_steps=n)

    def forward(self, params, frozen, batch, rng=None):
        """(logits, log-probs at the sampling temperature, values aligned with tokens) of the policy."""
        out = self.apply_policy(params, frozen, batch, head=("logits", "scalar"), rng=rng)
        t = self.config.policy.temperature
        return out["logits"], token_logprobs(out["logits"], batch["tokens"], temperature=t), shift_values(out["scalar"])

    def process_rollout(self, params, frozen, samples, rewards, kl_coef):
        return _process(self, params, frozen, samples, rewards, jnp.float32(kl_coef))

    def loss(self, params, frozen, batch, rng):
        r, p = self.config.rl, self.config.ppo
        logits, logp, values = self.forward(params, frozen, batch, rng)
        mask = batch["loss_mask"].astype(jnp.float32)
        pg, clipped = losses.ppo_policy_loss(logp, batch["old_logprobs"], batch["advantages"], clip_eps=r.clip_eps)
        vl, v_clipped = losses.value_loss(values, batch["old_values"], batch["returns"], clip_eps=p.value_clip or None)
        entropy = token_entropy(logits, temperature=self.config.policy.temperature)
        sums = {
            "pg_loss": masked_sum(pg, mask),
            "value_loss": masked_sum(vl, mask),
            "entropy": masked_sum(entropy, mask),
            "clip_fraction": masked_sum(clipped, mask),
            "value_clip_fraction": masked_sum(v_clipped, mask),
            "approx_kl": masked_sum(batch["old_logprobs"] - logp, mask),
        }
        objective = sums["pg_loss"] + p.vf_coef * sums["value_loss"] - p.entropy_coef * sums["entropy"]
        return objective, jnp.sum(mask), sums


@functools.partial(jax.jit, static_argnames=("task",))
def _process(task, params, frozen, samples, rewards, kl_coef):
    """The rollout's training rows: old/reference log-probs, values, KL-penalised rewards, GAE."""
    p, temperature = task.config.ppo, task.config.policy.temperature
    batch = response_batch(samples)
    _, old, values = task.forward(params, frozen, batch)
    ref = token_logprobs(task.reference_logits(frozen, batch), batch["tokens"], temperature=temperature)
    mask = batch["loss_mask"].astype(jnp.float32)
    kl = (old - ref) * mask  # k1 per token: the penalty's estimate under the samples
    last = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[1])[None, :], -1), axis=1)  # [n] last response token
    score = jax.nn.one_hot(jnp.maximum(last, 0), mask.shape[1]) * (last >= 0)[:, None] * rewards[:, None]
    token_rewards = -kl_coef * kl + score
    advantages, returns = adv_lib.gae(token_rewards, values, mask, gamma=p.gamma, lam=p.lam)
    if p.whiten_advantages:
        advantages = adv_lib.whiten(advantages, mask)
    batch.update(old_logprobs=old, advantages=advantages, returns=returns, old_values=values * mask)
    stats = {
        "kl": jnp.mean(jnp.sum(kl, axis=1)),
        "explained_variance": adv_lib.explained_variance(values, returns, mask),
        "value_mean": jnp.sum(values * mask) / jnp.maximum(mask.sum(), 1),
        "return_mean": jnp.sum(returns * mask) / jnp.maximum(mask.sum(), 1),
    }
    return batch, stats
