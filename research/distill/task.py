"""The "distill" training task: a student LM trained on a frozen teacher's soft labels.

    python -m research.main --config experiments/distillation.py --workdir DIR \
        --config.distill.teacher_workdir=TEACHER_DIR

The teacher is whatever model a finished workdir holds (its config.json gives
its architecture, its newest checkpoint its parameters), or a Hugging Face
gpt2/llama folder, so teacher and student may differ in depth and width; they must
share the tokenizer (a student of a Hugging Face teacher sets data.tokenizer=pretrained
and gets the teacher's). The teacher's
parameters are the step's `frozen` input: laid out on the same mesh by the same
logical rules as the student's (so a teacher too large for one device is
sharded too), never trained, never checkpointed; a resume reloads them from
`distill.teacher_workdir`, which a resumed run may not change.
"""

import jax
import optax

from research.distill.loss import distillation_loss_sums, soft_kl
from research.train import runs
from research.train.step import apply_with_aux, next_token_targets
from research.train.tasks import Task, register_task


def teacher_config(config):
    """The teacher run's saved config, after checking it shares the student's tokenizer.

    Raises ValueError naming distill.teacher_workdir if it is not a workdir, or if
    the teacher's tokenizer differs from the student's (the logits would not align).
    """
    workdir = config.distill.teacher_workdir
    saved = runs.read_config(workdir, field="distill.teacher_workdir")
    d, sd = config.data, saved.data
    same_vocab = d.tokenizer in ("byte", "pretrained") or d.vocab_size == sd.vocab_size  # fixed by the kind/file
    if sd.tokenizer != d.tokenizer or not same_vocab:
        raise ValueError(
            f"distill.teacher_workdir={workdir!r} used data.tokenizer={sd.tokenizer!r} "
            f"(vocab_size {sd.vocab_size}), this run data.tokenizer={d.tokenizer!r} (vocab_size {d.vocab_size}): "
            "teacher and student must share the tokenizer"
        )
    return saved


DISTILL_SECTION = dict(
    teacher_workdir="",  # a trained teacher's workdir; its config.json gives the teacher's model
    temperature=2.0,  # both distributions are softened by it; the KL term is scaled by T^2
    alpha=0.5,  # loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * hard-label cross-entropy
)


@register_task("distill")
class DistillTask(Task):
    """Next-token LM whose targets are the teacher's softened distributions (see research.distill.loss)."""

    config_sections = {"distill": DISTILL_SECTION}
    resume_must_match = ("distill.teacher_workdir",)

    @classmethod
    def tokenizer_sources(cls, config) -> tuple[str, ...]:
        # A student of a Hugging Face teacher (data.tokenizer="pretrained") takes the teacher's tokenizer.
        return (*super().tokenizer_sources(config), config.distill.teacher_workdir)

    @classmethod
    def validate_config(cls, config) -> None:
        d = config.distill
        if d.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {d.temperature}")
        if not 0.0 <= d.alpha <= 1.0:
            raise ValueError(f"distill.alpha (the soft-label weight) must be in [0, 1], got {d.alpha}")
        if not d.teacher_workdir:
            raise ValueError("train.task='distill' needs distill.teacher_workdir: the workdir of a trained teacher")

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.teacher = runs.adapted_model(teacher_config(config), tokenizer.vocab_size)  # any decoder run, PEFT too
        if self.teacher.config.max_len < config.data.seq_len:
            raise ValueError(
                f"the teacher in distill.teacher_workdir={config.distill.teacher_workdir!r} handles "
                f"{self.teacher.config.max_len} tokens, shorter than data.seq_len={config.data.seq_len}"
            )

    def frozen_params(self, mesh):
        """The teacher (research/train/runs.py: its newest parameters, and its base if it is a PEFT run),
        restored straight into their shardings on `mesh`."""
        return runs.load_run(self.config.distill.teacher_workdir, mesh, field="distill.teacher_workdir").params_dict()

    def _logits(self, params, frozen, batch):
        inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        student, aux, metrics = apply_with_aux(self.model.apply, {"params": params}, batch["tokens"], **inputs)
        teacher = self.teacher.apply({"params": frozen}, batch["tokens"], **inputs)  # frozen: trainable + base
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
