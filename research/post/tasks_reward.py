"""The "reward" task: a reward model trained on preference pairs with the Bradley-Terry loss.

    python -m research.main --config experiments/preference_frontier.py:stage=rm --workdir DIR \
        --config.post.base_workdir=SFT_DIR

The model is the policy's architecture with a scalar head (DecoderLM head
"scalar") read at each sequence's last token: r(x, y). It starts from
post.base_workdir's model (body loaded, head fresh), or trains a PEFT method
on it. The loss is -log sigmoid(r(x, y_chosen) - r(x, y_rejected)) per pair;
eval reports held-out pair accuracy (agreement with the gold preference) and the
loss. Logged per step: accuracy, margin, and the mean chosen/rejected scores.
"""

import jax.numpy as jnp

from research.post import losses
from research.post.pairs import PREFERENCE_SECTION, PairTask, flatten_pairs
from research.post.policy import POST_SECTION, PostTask
from research.post.rewards import last_real
from research.train.step import objective_sums
from research.train.tasks import register_task


@register_task("reward")
class RewardTask(PairTask, PostTask):
    """Bradley-Terry reward modelling; see the module docstring."""

    config_sections = {"post": POST_SECTION, "preference": PREFERENCE_SECTION}
    resume_must_match = ("peft", "quant", "post", "preference")
    needs_reference = False
    model_heads = ("scalar",)
    samples_after_training = False  # a score, not a language model

    def scores(self, params, frozen, batch, rng=None):
        """[rows, 2] scores of (chosen, rejected)."""
        flat = flatten_pairs(batch)
        values = self.apply_policy(params, frozen, flat, head="scalar", rng=rng)
        return last_real(values, flat["segment_ids"]).reshape(-1, 2)

    def _sums(self, params, frozen, batch, rng):
        r = self.scores(params, frozen, batch, rng)
        nll = jnp.sum(losses.bradley_terry_loss(r[:, 0], r[:, 1]))
        count = jnp.asarray(r.shape[0], jnp.float32)
        stats = dict(
            accuracy=jnp.sum(losses.pair_accuracy(r[:, 0], r[:, 1])),
            margin=jnp.sum(r[:, 0] - r[:, 1]),
            chosen_score=jnp.sum(r[:, 0]),
            rejected_score=jnp.sum(r[:, 1]),
        )
        return nll, count, stats

    def loss(self, params, frozen, batch, rng):
        nll, count, stats = self._sums(params, frozen, batch, rng)
        return objective_sums(nll, count, None, {}, **stats)

    def eval_sums(self, params, frozen, batch):
        nll, count, stats = self._sums(params, frozen, batch, None)
        return {"loss_sum": nll, "count": count, "accuracy_sum": stats["accuracy"], "margin_sum": stats["margin"]}
