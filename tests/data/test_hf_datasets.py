"""data.name="hf:..." reads a Hugging Face DatasetDict through the same pipeline as TFDS and files."""

import math

import jax
import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="the hf-datasets extra (pip install -e .[hf-datasets])")

from research.data.hf_datasets import hf_sources  # noqa: E402
from research.data.pipeline import DataSpec, document_texts, make_eval_batches, make_train_iterator  # noqa: E402
from research.tokenizers import ByteTokenizer  # noqa: E402

TRAIN = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
VALID = [f"class C{i}:\n    pass\n" for i in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_dataset") / "corpus"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"content": TRAIN, "id": list(range(40))}),
        validation=datasets.Dataset.from_dict({"content": VALID, "id": list(range(10))}),
    ).save_to_disk(str(path))
    return path


def _spec(saved, **kw):
    fields = dict(name=f"hf:{saved}", data_dir=None, text_key="content", train_split="train",
                  eval_split="validation", seq_len=16, global_batch_size=4, num_shards=1, seed=0)  # fmt: skip
    return DataSpec(**{**fields, **kw})


def test_records_and_batches_come_from_the_splits(saved):
    spec = _spec(saved)
    assert document_texts(spec) == TRAIN and document_texts(spec, "eval") == VALID
    tok = ByteTokenizer()
    batch = next(make_train_iterator(spec, tok, process_index=0, process_count=1))
    assert batch["tokens"].shape == (4, 16)
    texts = "".join(tok.decode(row) for row in batch["tokens"])
    assert "return x +" in texts  # train documents, packed
    evals = make_eval_batches(spec, tok, num_batches=1, process_index=0, process_count=1)
    assert "pass" in tok.decode(evals[0]["tokens"].ravel()) and "return" not in tok.decode(evals[0]["tokens"].ravel())


def test_missing_splits_columns_and_datasets_name_the_field(saved, tmp_path):
    with pytest.raises(ValueError, match=r"data.eval_split='test' is not a split.*\['train', 'validation'\]"):
        hf_sources(f"hf:{saved}", "content", "train", "test")
    with pytest.raises(ValueError, match=r"data.text_key='text' is not a column.*\['content', 'id'\]"):
        hf_sources(f"hf:{saved}", "text", "train", "validation")
    with pytest.raises(ValueError, match="name a dataset after 'hf:'"):
        hf_sources("hf:", "text", "train", "validation")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"content": TRAIN}).save_to_disk(str(single))
    with pytest.raises(ValueError, match="is a single split"):
        hf_sources(f"hf:{single}", "content", "train", "validation")


def test_a_run_trains_on_a_saved_dataset(saved, tmp_path):
    from research.train.loop import train
    from research.train.tasks import task_config

    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(name=f"hf:{saved}", text_key="content", seq_len=16)
    c.train.update(steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1, trackers="")
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    assert np.isfinite(train(c, tmp_path / "run")["eval_loss"])
