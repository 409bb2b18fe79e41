"""research.evaluate reproduces a run's last eval line from its checkpoint, adds bits per byte, and reads
Hugging Face folders; bad --out and workdirs are refused."""

import json
import math

import jax
import numpy as np
import pytest

from research.evaluate import evaluate_run, markdown, report
from research.train.bits_per_byte import bits_per_byte
from research.train.loop import train
from research.train.runs import load_run
from research.train.tasks import task_config

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(120)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (root / "eval.jsonl").write_text("".join(json.dumps({"text": t[::-1]}) + "\n" for t in TEXTS[:40]))
    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(seq_len=32, train_files=str(root / "train.jsonl"), eval_files=str(root / "eval.jsonl"))
    c.train.update(steps=4, batch_size=8, eval_every=4, checkpoint_every=4, log_every=2, eval_batches=2, trackers="")
    data = math.gcd(8, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    last = train(c, root / "run")
    return root, last


def test_it_reproduces_the_runs_last_eval_and_adds_bits_per_byte(run):
    root, last = run
    results = evaluate_run(root / "run", bits_per_byte_bytes=2_000)
    assert results["task"] == "lm"
    np.testing.assert_allclose(results["eval_loss"], last["eval_loss"], rtol=1e-6)
    np.testing.assert_allclose(results["eval_perplexity"], math.exp(results["eval_loss"]), rtol=1e-6)
    texts, total = [], 0
    for t in TEXTS[:40]:  # the eval split's documents, in order, up to 2000 bytes
        texts.append(t[::-1])
        total += len(texts[-1].encode())
        if total >= 2_000:
            break
    loaded = load_run(root / "run")
    want = bits_per_byte(*loaded.for_decoding(), loaded.tokenizer, texts, seq_len=32)["bits_per_byte"]
    np.testing.assert_allclose(results["bits_per_byte"], want, rtol=1e-6)
    # other files: another loss, the same checkpoint
    other = evaluate_run(root / "run", eval_files=str(root / "train.jsonl"), eval_batches=1, bits_per_byte_bytes=0)
    assert "bits_per_byte" not in other and other["eval_loss"] != results["eval_loss"]
    assert "| eval_loss | " in markdown(results)


def test_out_is_written_once_and_never_overwritten(run, tmp_path, capsys):
    root, _ = run
    out = tmp_path / "eval.json"
    report(root / "run", out=str(out), eval_batches=1, bits_per_byte_bytes=0)
    assert json.loads(out.read_text())["task"] == "lm" and "| eval_loss |" in (tmp_path / "eval.json.md").read_text()
    assert "| eval_loss |" in capsys.readouterr().out
    before = out.read_text()
    with pytest.raises(ValueError, match="eval.json exists; nothing was written"):
        report(root / "run", out=str(out), eval_batches=1, bits_per_byte_bytes=0)
    assert out.read_text() == before


def test_a_workdir_without_a_run_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="--workdir=.*holds no config.json"):
        evaluate_run(tmp_path)
