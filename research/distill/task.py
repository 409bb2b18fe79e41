"""The "distill" training task: a student LM trained on a frozen teacher's soft labels.

    python -m research.main --config experiments/distillation.py --workdir DIR \
        --config.distill.teacher_workdir=TEACHER_DIR

The teacher is whatever model a finished workdir holds (its config.json gives
its architecture, its newest checkpoint its parameters), so teacher and student
may differ in depth and width; they must share the tokenizer. The teacher's
parameters are the step's `frozen` input: laid out on the same mesh by the same
logical rules as the student's (so a teacher too large for one device is
sharded too), never trained, never checkpointed; a resume reloads them from
`distill.teacher_workdir`, which a resumed run may not change.
"""

import json

import jax
import ml_collections
import optax
from etils import epath

from research import config as config_lib
from research.distill.loss import distillation_loss_sums, soft_kl
from research.models import DecoderLM
from research.train import checkpoint
from research.train.sharding import logical_shardings, strip_boxes
from research.train.step import apply_with_aux, next_token_targets
from research.train.tasks import Task, register_task


def teacher_config(config) -> ml_collections.ConfigDict:
    """The teacher run's config (its model and seq_len) from distill.teacher_workdir/config.json.

    Raises ValueError naming distill.teacher_workdir if it is not a workdir, or if
    the teacher's tokenizer differs from the student's (the logits would not align).
    """
    workdir = config.distill.teacher_workdir
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"distill.teacher_workdir={workdir!r} holds no config.json: not a training workdir")
    saved = json.loads(path.read_text())
    d, sd = config.data, saved["data"]
    same_vocab = d.tokenizer == "byte" or d.vocab_size == sd["vocab_size"]
    if sd["tokenizer"] != d.tokenizer or not same_vocab:
        raise ValueError(
            f"distill.teacher_workdir={workdir!r} used data.tokenizer={sd['tokenizer']!r} "
            f"(vocab_size {sd['vocab_size']}), this run data.tokenizer={d.tokenizer!r} (vocab_size {d.vocab_size}): "
            "teacher and student must share the tokenizer"
        )
    teacher = config_lib.default_config()
    model = dict(saved["model"])
    options = model.pop("attention_options", {})
    unknown = sorted(set(model) - set(teacher.model))
    if unknown:
        raise ValueError(f"distill.teacher_workdir={workdir!r}: its config has model keys this code lacks: {unknown}")
    teacher.model.update(model)
    teacher.model.attention_options.update({k: v for k, v in options.items() if k in teacher.model.attention_options})
    teacher.data.seq_len = sd["seq_len"]
    return teacher


@register_task("distill")
class DistillTask(Task):
    """Next-token LM whose targets are the teacher's softened distributions (see research.distill.loss)."""

    resume_must_match = ("distill.teacher_workdir",)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.teacher = DecoderLM(config_lib.model_config(teacher_config(config), tokenizer.vocab_size))
        if self.teacher.config.max_len < config.data.seq_len:
            raise ValueError(
                f"the teacher in distill.teacher_workdir={config.distill.teacher_workdir!r} handles "
                f"{self.teacher.config.max_len} tokens, shorter than data.seq_len={config.data.seq_len}"
            )

    def frozen_params(self, mesh):
        """The teacher's newest parameters, restored straight into their shardings on `mesh`."""
        boxed = jax.eval_shape(lambda: self.teacher.init(jax.random.key(0), **self.init_inputs())["params"])
        shardings = logical_shardings(boxed, mesh)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), strip_boxes(boxed), shardings
        )
        try:
            return checkpoint.latest_params(self.config.distill.teacher_workdir, abstract)
        except ValueError as e:
            raise ValueError(f"distill.teacher_workdir: {e}") from None

    def _logits(self, params, frozen, batch):
        inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        student, aux, metrics = apply_with_aux(self.model.apply, {"params": params}, batch["tokens"], **inputs)
        teacher = self.teacher.apply({"params": frozen}, batch["tokens"], **inputs)
        return student, jax.lax.stop_gradient(teacher), aux, metrics

    def loss(self, params, frozen, batch, rng):
        del rng
        student, teacher, aux, metrics = self._logits(params, frozen, batch)
        targets, weights = next_token_targets(batch)
        d = self.config.distill
        total, count, sums = distillation_loss_sums(
            student, teacher, targets, weights, temperature=d.temperature, alpha=d.alpha
        )
        sums.update({k: v * count for k, v in metrics.items()})
        if aux is not None:  # the student's own regularisers (e.g. MoE balancing) still apply
            sums["aux_loss"] = aux * count
            total = total + aux * count
        return total, count, sums

    def eval_sums(self, params, frozen, batch) -> dict:
        """The student's hard-label NLL (comparable across temperatures) and its KL to the teacher at T = 1."""
        student, teacher, _, _ = self._logits(params, frozen, batch)
        targets, weights = next_token_targets(batch)
        nll = optax.softmax_cross_entropy_with_integer_labels(student, targets)
        return {
            "loss_sum": (nll * weights).sum(),
            "count": weights.sum(),
            "kl_sum": (soft_kl(student, teacher, 1.0) * weights).sum(),
        }
