"""The "distill" task end to end: a teacher workdir, then a smaller student trained on its soft labels
in one sharded step (the teacher laid out on the same 8-device mesh as the student); one step on that
mesh against one device's and a numpy reference of the objective."""

import json

import jax
import numpy as np
import pytest

from research.config import model_config
from research.distill.task import DistillTask, teacher_config
from research.models import DecoderLM
from research.tokenizers import ByteTokenizer
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.tasks import task_config, with_task
from tests.train.harness import PADS, assert_same_update, linear_first_update, one_step, ragged_batch


def _config(data_dir, *, layers, d_model, heads, kv_heads, steps):
    c = task_config()
    c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, num_kv_heads=kv_heads, mlp_dim=2 * d_model)
    c.data.update(data_dir=data_dir, seq_len=32)
    c.train.update(steps=steps, batch_size=8, eval_every=steps, checkpoint_every=steps, eval_batches=1, log_every=1)
    c.train.async_checkpointing = False
    return c


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("teacher")
    train(_config(data_dir, layers=2, d_model=64, heads=4, kv_heads=2, steps=3), workdir)
    return workdir


def test_student_of_another_size_distills_on_a_sharded_mesh(tmp_path, data_dir, teacher_workdir):
    c = _config(data_dir, layers=1, d_model=32, heads=2, kv_heads=2, steps=2)
    c = with_task(c, "distill")
    c.distill.update(teacher_workdir=str(teacher_workdir), temperature=2.0, alpha=0.7)
    c.mesh.update(data=2, fsdp=2, tensor=2)  # the teacher's 4 heads split over tensor=2 as well
    last = train(c, tmp_path / "student")
    metrics = read_metrics(tmp_path / "student")
    steps = [m for m in metrics if "kl" in m]
    assert len(steps) == 2 and all(m["kl"] > 0 and np.isfinite(m["loss"]) for m in steps)
    # the logged objective is alpha T^2 KL + (1 - alpha) NLL, per target token
    m = steps[0]
    np.testing.assert_allclose(m["loss"], 0.7 * 4.0 * m["kl"] + 0.3 * m["nll"], rtol=1e-4)
    assert last["eval_kl"] > 0 and np.isfinite(last["eval_loss"])
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["distill"]["teacher_workdir"] == str(teacher_workdir)


def reference_objective(student_logits, teacher_logits, batch, *, temperature, alpha):
    """(alpha T^2 KL + (1 - alpha) NLL, KL, NLL) per target token, in float64 from the formulas."""
    s, t = (np.asarray(x, np.float64) for x in (student_logits, teacher_logits))
    tokens, seg = batch["tokens"], batch["segment_ids"]
    # Targets: the next token of the same segment; padding and the last column have none.
    weights = np.zeros(seg.shape)
    weights[:, :-1] = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] != 0)
    targets = np.roll(tokens, -1, axis=1)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_pt, log_ps = log_softmax(t / temperature), log_softmax(s / temperature)
    kl = np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)
    nll = -np.take_along_axis(log_softmax(s), targets[..., None], -1)[..., 0]
    count = weights.sum()
    kl, nll = (kl * weights).sum() / count, (nll * weights).sum() / count
    return alpha * temperature**2 * kl + (1 - alpha) * nll, kl, nll


def test_sharded_distill_step_equals_single_device_and_reference(data_dir, teacher_workdir):
    """One step on data=2 x fsdp=2 x tensor=2 vs one device's (accumulation: tests/train/test_sharding.py)."""
    c = with_task(_config(data_dir, layers=1, d_model=32, heads=2, kv_heads=2, steps=1), "distill")
    c.distill.update(teacher_workdir=str(teacher_workdir), temperature=2.0, alpha=0.7)
    linear_first_update(c.optim)
    batch = ragged_batch()
    c.mesh.update(data=1, fsdp=1, tensor=1)
    m1, p1, p0, _, teacher = one_step(c, jax.devices()[:1], batch, DistillTask(c, ByteTokenizer()))
    c.mesh.update(data=2, fsdp=2, tensor=2)
    m8, p8, p0_8, _, frozen_8 = one_step(c, jax.devices()[:8], batch, DistillTask(c, ByteTokenizer()))
    spec = frozen_8["trainable"]["block_0"]["attn"]["query"].sharding.spec
    assert tuple(spec)[:2] == ("fsdp", "tensor")  # the teacher really is sharded
    jax.tree.map(np.testing.assert_array_equal, p0_8, p0)  # same init on both meshes

    # The objective at the initial weights, from both models' logits, in numpy.
    vocab = ByteTokenizer().vocab_size

    def logits(config, params):
        model = DecoderLM(model_config(config, vocab))
        apply = jax.jit(lambda p, b: model.apply({"params": p}, b["tokens"], positions=b["positions"],
                                                 segment_ids=b["segment_ids"]))  # fmt: skip
        return apply(params, batch)

    student, teacher_logits = logits(c, p0), logits(teacher_config(c), jax.device_get(teacher["trainable"]))
    loss, kl, nll = reference_objective(student, teacher_logits, batch, temperature=2.0, alpha=0.7)
    assert m1["target_tokens"] == m8["target_tokens"] == sum(32 - pad - 2 for pad in PADS)
    # float32 softmaxes over 263 logits and sums over 148 tokens vs float64: ~1e-6 relative.
    for m in (m1, m8):
        np.testing.assert_allclose([m["loss"], m["kl"], m["nll"]], [loss, kl, nll], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)  # as in test_sharding
    assert_same_update(p1, p8, p0)


def test_teacher_errors_name_the_field(tmp_path, data_dir, teacher_workdir):
    c = _config(data_dir, layers=1, d_model=32, heads=2, kv_heads=2, steps=1)
    c = with_task(c, "distill")
    with pytest.raises(ValueError, match="distill.teacher_workdir"):
        train(c, tmp_path / "a")  # none given
    c.distill.teacher_workdir = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="distill.teacher_workdir=.*holds no config.json"):
        train(c, tmp_path / "b")
    c.distill.teacher_workdir = str(teacher_workdir)
    c.data.update(tokenizer="bpe", vocab_size=300)
    with pytest.raises(ValueError, match="must share the tokenizer"):
        train(c, tmp_path / "c")
    assert jax.device_count() == 8
