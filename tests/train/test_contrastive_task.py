"""The "contrastive" task: its batches, its loss against a per-row reference, its config checks, and a run
loaded back as an embedding function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.apps import rag_data
from research.tokenizers import ByteTokenizer
from research.train.loop import train
from research.train.tasks import task_config, validate_config
from research.train.tasks_contrastive import ContrastiveTask, load_encoder

TOK = ByteTokenizer()


def _config(**section):
    c = task_config("contrastive")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.encoder.pooling = "mean"
    c.data.seq_len = 48
    c.train.update(steps=3, batch_size=8, eval_every=3, checkpoint_every=3, log_every=1, eval_batches=1)
    c.contrastive.update({"entities": 6, **section})
    return c


def test_batches_pair_questions_with_their_answer_chunks():
    task = ContrastiveTask(_config(), TOK)
    batch = next(task.train_iterator(0, 1))
    assert batch["query_tokens"].shape == batch["passage_tokens"].shape == (8, 48)
    texts = {k: [TOK.decode([t for t in row[1:] if t]) for row in batch[f"{k}_tokens"]] for k in ("query", "passage")}
    valid = batch["valid"].astype(bool)
    assert valid.sum() >= 4 and len(set(np.array(texts["passage"])[valid])) == valid.sum()  # distinct positives
    for query, passage in zip(np.array(texts["query"])[valid], np.array(texts["passage"])[valid], strict=True):
        name, attribute = query.rstrip("?").split()  # rag_data.query: "Zenqui colour?"
        assert attribute in rag_data.ATTRIBUTES and len(passage.split()) <= 4  # batch 0 chunks at n_c = 4
    assert (batch["query_tokens"][:, 0] == TOK.cls_id).all()
    # Train and eval worlds differ: no eval question is a training one.
    eval_batch = task.eval_batches(0, 1)[0]
    assert not np.array_equal(eval_batch["query_tokens"], batch["query_tokens"])


def test_loss_is_infonce_over_rows_embedded_one_at_a_time():
    config = _config(temperature=0.1, symmetric=True)
    config.train.batch_size = 4
    task = ContrastiveTask(config, TOK)
    params = task.model.init(jax.random.key(0), **task.init_inputs())["params"]
    batch = jax.tree.map(jnp.asarray, task.eval_batches(0, 1)[0])
    total, count, sums = jax.jit(task.loss)(params, None, batch, None)

    hidden = jax.jit(lambda t: task.model.apply({"params": params}, t, head="hidden")[0])

    def alone(tokens, segment_ids):  # each row by itself, cut to its real tokens: no padding anywhere
        return np.asarray(hidden(tokens[None, : int(segment_ids.sum())]).mean(0))

    valid = np.asarray(batch["valid"]).astype(bool)
    q = np.stack([alone(t, s) for t, s in zip(batch["query_tokens"], batch["query_segment_ids"], strict=True)])[valid]
    p = np.stack([alone(t, s) for t, s in zip(batch["passage_tokens"], batch["passage_segment_ids"], strict=True)])
    p = p[valid]
    q, p = q / np.linalg.norm(q, axis=1, keepdims=True), p / np.linalg.norm(p, axis=1, keepdims=True)

    def infonce(a, b):
        s = a @ b.T / 0.1
        s = s - s.max(1, keepdims=True)
        return -np.sum(np.diag(s) - np.log(np.exp(s).sum(1))), np.sum(np.argmax(s, 1) == np.arange(len(s)))

    (l1, c1), (l2, c2) = infonce(q, p), infonce(p, q)
    np.testing.assert_allclose(float(total), l1 + l2, rtol=2e-4)
    assert float(count) == 2 * valid.sum() and float(sums["accuracy"]) == c1 + c2


@pytest.mark.parametrize(
    "section, field",
    [
        (dict(words="4,0", overlap="1,0"), "n_c=0"),
        (dict(words="4,8", overlap="1,8"), "contrastive.overlap"),
        (dict(words="4,8", overlap="1"), "contrastive.overlap"),
        (dict(words="four"), "contrastive.words"),
        (dict(temperature=0.0), "contrastive.temperature"),
        (dict(entities=1), "contrastive.entities"),
    ],
)
def test_bad_config_names_the_field(section, field):
    with pytest.raises(ValueError, match=field):
        validate_config(_config(**section))


def test_a_trained_run_loads_as_an_embedding_function(tmp_path):
    config = _config()
    train(config, tmp_path / "enc")
    embed = load_encoder(tmp_path / "enc", batch_size=4)
    texts = ["What is the age of Zenlo?", "Zenlo: founder Gala Ltrave,", "x"]
    vectors = embed(texts)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    np.testing.assert_allclose(embed(texts[1:2])[0], vectors[1], rtol=1e-5, atol=1e-6)  # batch-independent
    assert not np.allclose(vectors[0], vectors[1])
    with pytest.raises(ValueError, match="not 'contrastive'"):
        c = task_config("lm")
        (tmp_path / "lm").mkdir()
        (tmp_path / "lm" / "config.json").write_text(c.to_json())
        load_encoder(tmp_path / "lm")
