"""Your own files as a data source (research/data/files.py): JSONL lines and text files, through the pipeline."""

import json
import math

import numpy as np
import pytest

from research.config import default_config
from research.data import ByteTokenizer, DataSpec, make_eval_batches, make_train_iterator
from research.data.files import FileSource, expand
from research.train.tasks import validate_config

tok = ByteTokenizer()


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def corpus(tmp_path):
    """Two JSONL files (one with a blank line and multi-byte text) and two text files."""
    write_jsonl(tmp_path / "a" / "part1.jsonl", [{"text": f"doc {i} é中😀", "id": i} for i in range(5)])
    (tmp_path / "a" / "part0.jsonl").write_text('{"text": "first"}\n\n{"text": "second", "x": [1]}\n')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.txt").write_text("def f():\n    return 1\n")
    (tmp_path / "b" / "two.txt").write_text("x = 2\n")
    return tmp_path


def test_records_in_sorted_path_order(corpus):
    source = FileSource(f"{corpus}/a/*.jsonl,{corpus}/b/*.txt", "text", "data.train_files")
    texts = [source[i]["text"] for i in range(len(source))]
    assert texts == ["first", "second", *(f"doc {i} é中😀" for i in range(5)), "def f():\n    return 1\n", "x = 2\n"]
    assert [str(p) for p in source.paths] == sorted(str(p) for p in source.paths)
    assert source[3] == source[3]  # random access: any record, any order, read from its offset
    # Another text key, and a glob matched twice counts each file once.
    (corpus / "c").mkdir()
    write_jsonl(corpus / "c" / "q.jsonl", [{"content": "hello"}])
    assert len(FileSource(f"{corpus}/c/*.jsonl,{corpus}/c/q.jsonl", "content", "f")) == 1


def test_bad_files_are_errors_naming_the_path_and_line(corpus):
    with pytest.raises(ValueError, match=r"data.train_files: '.*/nothing/\*.jsonl' matches no file"):
        expand(f"{corpus}/nothing/*.jsonl", "data.train_files")
    with pytest.raises(ValueError, match=r"data.eval_files=.*must end in one of \('.jsonl', '.txt'\)"):
        expand(f"{corpus}/a/*.csv", "data.eval_files")
    (corpus / "bad").mkdir()
    (corpus / "bad" / "broken.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not a JSON line"):
        FileSource(f"{corpus}/bad/broken.jsonl", "text", "data.train_files")
    (corpus / "bad" / "broken.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: no text field 'text' \(data.text_key\)"):
        FileSource(f"{corpus}/bad/broken.jsonl", "text", "data.train_files")
    (corpus / "bad" / "broken.jsonl").write_text('["a list"]\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: no text field"):
        FileSource(f"{corpus}/bad/broken.jsonl", "text", "data.train_files")
    (corpus / "bad" / "broken.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="hold no record"):
        FileSource(f"{corpus}/bad/broken.jsonl", "text", "data.train_files")


def test_config_needs_both_globs_of_known_suffixes():
    c = default_config()
    c.data.update(train_files="train/*.jsonl", eval_files="eval/*.jsonl")
    validate_config(c)
    c.data.eval_files = ""
    with pytest.raises(ValueError, match="set both"):
        validate_config(c)
    c.data.eval_files = "eval/*.parquet"
    with pytest.raises(ValueError, match="data.eval_files="):
        validate_config(c)


def spec(corpus, **overrides):
    fields = dict(
        name="unused", data_dir=None, text_key="text", train_split="train", eval_split="validation", seq_len=16,
        global_batch_size=4, num_shards=2, seed=0, train_files=f"{corpus}/a/*.jsonl", eval_files=f"{corpus}/b/*.txt",
    )  # fmt: skip
    return DataSpec(**{**fields, **overrides})


def test_the_pipeline_packs_the_files_and_resumes_exactly(corpus):
    s = spec(corpus)
    iterator = make_train_iterator(s, tok, process_index=0, process_count=1)
    first = [next(iterator) for _ in range(3)]
    assert first[0]["tokens"].shape == (4, 16)
    text = tok.decode(np.concatenate([b["tokens"].ravel() for b in first]))
    assert "second" in text and "doc 3 é中😀" in text  # the JSONL texts, packed
    state = json.loads(json.dumps(iterator.get_state()))
    after = [next(iterator) for _ in range(2)]
    resumed = make_train_iterator(s, tok, process_index=0, process_count=1)
    resumed.set_state(state)
    for a, b in zip(after, [next(resumed) for _ in range(2)], strict=True):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # Two processes together yield what one does (shards of the same files).
    halves = [next(make_train_iterator(s, tok, process_index=p, process_count=2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]), first[0]["tokens"])
    evals = make_eval_batches(s, tok, num_batches=1, process_index=0, process_count=1)
    assert "return 1" in tok.decode(evals[0]["tokens"].ravel())  # the eval files are the .txt ones


def test_a_run_trains_on_files(corpus, tmp_path):
    """research.main's path end to end: a config naming the files trains and evaluates on them."""
    import jax

    from research.train.loop import train
    from research.train.tasks import task_config

    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(seq_len=16, train_files=f"{corpus}/a/*.jsonl", eval_files=f"{corpus}/b/*.txt")
    c.train.update(steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1)
    data = math.gcd(4, jax.device_count())  # whatever fake devices the session has
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    last = train(c, tmp_path / "run")
    assert np.isfinite(last["eval_loss"])


def test_resuming_on_other_train_files_is_refused(tmp_path):
    from research.train import checkpoint

    c = default_config()
    c.data.update(train_files="a/*.jsonl", eval_files="b/*.txt")
    checkpoint.save_config(tmp_path, c)
    checkpoint.check_resume_compatible(tmp_path, c)
    other = c.copy_and_resolve_references()
    other.data.train_files = "c/*.jsonl"
    with pytest.raises(ValueError, match=r"data.train_files: 'a/\*.jsonl' -> 'c/\*.jsonl'"):
        checkpoint.check_resume_compatible(tmp_path, other)
    other.data.update(train_files="a/*.jsonl", eval_files="d/*.txt")  # another eval set: allowed
    checkpoint.check_resume_compatible(tmp_path, other)
    # A workdir written before the key existed trained on data.name: it resumes with the key unset.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data"]["train_files"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    checkpoint.check_resume_compatible(tmp_path, default_config())
