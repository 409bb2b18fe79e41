"""Knowledge distillation: a student trained on a frozen teacher's temperature-softened distributions.

`loss`: the KL(teacher || student) * T^2 loss, optionally mixed with the hard-label loss.
`task`: the "distill" training task (train.task='distill'); the teacher is the
frozen input of the step, loaded from `distill.teacher_workdir`, and may differ in size.
"""

from research.distill.loss import distillation_loss_sums, soft_kl
from research.distill.task import DistillTask

__all__ = ["DistillTask", "distillation_loss_sums", "soft_kl"]
