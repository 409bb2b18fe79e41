"""The "dpo" task: Direct Preference Optimization, reward model and RL folded into one supervised step.

    python -m research.main --config experiments/preference_frontier.py:stage=dpo --workdir DIR \
        --config.post.base_workdir=SFT_DIR --config.dpo.beta=0.1

Per pair, h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)) over
response tokens; the loss is -log sigmoid(beta h) (dpo.loss_type="sigmoid", with
dpo.label_smoothing the conservative form) or (h - 1/(2 beta))^2 ("ipo"). The
reference is post.base_workdir's model (with PEFT the frozen base, otherwise a
frozen copy); the policy starts equal to it, so the first step's loss is log 2.

Logged every step: the implicit rewards beta * (log pi - log ref) of chosen and
rejected, their margin, preference accuracy (margin > 0), and kl_chosen, the mean
of log pi - log ref over the chosen responses (a KL estimate under the data, not
the policy). Eval: the same on held-out pairs (agreement with the gold preference),
and the sampled evaluation every policy task has (research/post/policy.py): gold
reward and KL(pi || ref) from policy.eval_prompts x policy.eval_samples samples.
"""

import jax.numpy as jnp

from research.post import losses
from research.post.pairs import PREFERENCE_SECTION, PairTask, flatten_pairs, sequence_logprobs
from research.post.policy import POLICY_SECTION, POST_SECTION, SamplingTask
from research.train.step import objective_sums
from research.train.tasks import register_task

DPO_SECTION = dict(
    beta=0.1,  # strength of the implicit KL constraint (> 0)
    loss_type="sigmoid",  # sigmoid (DPO) | ipo
    label_smoothing=0.0,  # sigmoid only: the assumed label-noise rate (conservative DPO), in [0, 0.5)
)


@register_task("dpo")
class DPOTask(PairTask, SamplingTask):
    """DPO; see the module docstring."""

    config_sections = {"post": POST_SECTION, "policy": POLICY_SECTION, "preference": PREFERENCE_SECTION,
                       "dpo": DPO_SECTION}  # fmt: skip
    resume_must_match = ("peft", "quant", "post", "preference", "dpo")

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        d = config.dpo
        losses.check_dpo(d.beta, d.loss_type, d.label_smoothing)

    def _sums(self, params, frozen, batch, rng):
        flat = flatten_pairs(batch)
        policy = sequence_logprobs(self.apply_policy(params, frozen, flat, rng=rng), flat).reshape(-1, 2)
        ref = sequence_logprobs(self.reference_logits(frozen, flat), flat).reshape(-1, 2)
        d = self.config.dpo
        per_pair, stats = losses.dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=d.beta,
                                          loss_type=d.loss_type, label_smoothing=d.label_smoothing)  # fmt: skip
        chosen_tokens = jnp.maximum(batch["response_mask"][:, 0].sum(axis=1), 1).astype(jnp.float32)
        sums = {k: jnp.sum(v) for k, v in stats.items()}
        sums["kl_chosen"] = jnp.sum((policy[:, 0] - ref[:, 0]) / chosen_tokens)  # per token, on chosen responses
        return jnp.sum(per_pair), jnp.asarray(per_pair.shape[0], jnp.float32), sums

    def loss(self, params, frozen, batch, rng):
        total, count, sums = self._sums(params, frozen, batch, rng)
        return objective_sums(total, count, None, {}, **sums)

    def eval_sums(self, params, frozen, batch):
        total, count, sums = self._sums(params, frozen, batch, None)
        return {"loss_sum": total, "count": count, "accuracy_sum": sums["accuracy"], "margin_sum": sums["margin"]}
