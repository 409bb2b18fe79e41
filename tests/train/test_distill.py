"""The "distill" task end to end: a teacher workdir, then a smaller student trained on its soft labels
in one sharded step (the teacher laid out on the same 8-device mesh as the student)."""

import json

import jax
import numpy as np
import pytest

from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.tasks import task_config, with_task


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
