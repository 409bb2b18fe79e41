"""The python_stdlib builder and the grain pipeline, on the fake stdlib tree from conftest.py."""

import dataclasses
import json
import math
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.data import ByteTokenizer, DataSpec, load_sources, make_eval_batches, make_train_iterator, stdlib_corpus
from research.data.pipeline import PackedRows

tok = ByteTokenizer()


def make_spec(data_dir, **overrides) -> DataSpec:
    fields = dict(
        name="python_stdlib", data_dir=data_dir, text_key="text", train_split="train", eval_split="validation",
        seq_len=64, global_batch_size=4, num_shards=2, seed=0,
    )  # fmt: skip
    return DataSpec(**{**fields, **overrides})


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def split_paths(source) -> list[str]:
    return [source[i]["path"].decode() for i in range(len(source))]


def documents(source) -> list[np.ndarray]:
    """The token sequences the pipeline packs: each record's text then EOS."""
    return [tok.encode(source[i]["text"], add_eos=True) for i in range(len(source))]


# --- the builder ---------------------------------------------------------------------------------


def test_lists_only_stdlib_python_files(fake_stdlib):
    files = stdlib_corpus.list_python_files(fake_stdlib)
    assert files == sorted(files) and len(files) == 122  # conftest's 120 modules, empty.py, latin1.py
    assert {"empty.py", "latin1.py", "pkg0/mod_000.py"} <= set(files)
    assert not [f for f in files if "packages" in f or not f.endswith(".py")]


def test_splits_are_disjoint_stable_and_hash_based(fake_stdlib, fake_data_dir, prepare_fake_corpus, tmp_path):
    sources = load_sources(make_spec(fake_data_dir))
    train, validation = split_paths(sources["train"]), split_paths(sources["eval"])
    assert train and validation and not set(train) & set(validation)
    assert sorted(train + validation) == stdlib_corpus.list_python_files(fake_stdlib)
    assert all(stdlib_corpus.split_of(p) == "validation" for p in validation)
    again = prepare_fake_corpus(tmp_path).as_data_source()
    assert sorted(split_paths(again["train"])) == sorted(train)
    assert sorted(split_paths(again["validation"])) == sorted(validation)


def test_non_utf8_file_is_kept_with_replacement_chars(fake_data_dir):
    sources = load_sources(make_spec(fake_data_dir))
    records = [s[i] for s in sources.values() for i in range(len(s))]
    (latin1,) = [r for r in records if r["path"] == b"latin1.py"]
    assert latin1["text"].decode() == "# caf\ufffd is latin-1, not UTF-8\n"


def test_config_is_named_after_the_python_version(fake_data_dir):
    builder = stdlib_corpus.PythonStdlib(data_dir=fake_data_dir)
    assert builder.builder_config.name == f"py{sys.version_info.major}.{sys.version_info.minor}"
    assert str(builder.version) == "1.0.0"


def test_real_stdlib_listing_and_split_fraction():
    files = stdlib_corpus.list_python_files(stdlib_corpus.stdlib_root())
    assert len(files) > 500 and "os.py" in files
    assert not [f for f in files if "site-packages" in f or "dist-packages" in f]
    validation = sum(stdlib_corpus.split_of(f) == "validation" for f in files)
    assert 0.02 < validation / len(files) < 0.09


# --- packing -------------------------------------------------------------------------------------


def pack(docs, seq_len):
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return PackedRows(grain.MapDataset.source(docs).to_iter_dataset(read), seq_len)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=10), seq_len=st.integers(1, 16))
def test_packing_keeps_every_token_in_order_and_marks_fragments(lengths, seq_len):
    # Token 1000 * (doc + 1) + offset tells which document and offset it came from.
    docs = [1000 * (d + 1) + np.arange(n, dtype=np.int32) for d, n in enumerate(lengths)]
    rows = list(pack(docs, seq_len))
    total = sum(lengths)
    assert len(rows) == math.ceil(total / seq_len)
    for r, row in enumerate(rows):
        assert all(v.shape == (seq_len,) and v.dtype == np.int32 for v in row.values())
        tokens, segments, positions = row["tokens"], row["segment_ids"], row["positions"]
        used = segments > 0
        assert used.all() or r == len(rows) - 1, "only the final row may hold padding"
        assert not tokens[~used].any() and not positions[~used].any()
        assert (np.diff(segments[used]) >= 0).all() and (np.diff(np.flatnonzero(used)) == 1).all()
        for s in range(1, segments.max() + 1):
            (where,) = np.nonzero(segments == s)
            assert (np.diff(where) == 1).all(), "a fragment is contiguous in its row"
            np.testing.assert_array_equal(positions[where], np.arange(len(where)))
            doc, offsets = tokens[where] // 1000 - 1, tokens[where] % 1000
            assert (doc == doc[0]).all(), "a fragment comes from one document"
            np.testing.assert_array_equal(offsets, offsets[0] + np.arange(len(where)))
            if s > 1:
                assert offsets[0] == 0, "later fragments in a row start their document"
            if s < segments.max():
                assert offsets[-1] == lengths[doc[0]] - 1, "earlier fragments end their document"
    stream = np.concatenate([row["tokens"][row["segment_ids"] > 0] for row in rows] + [np.zeros(0, np.int32)])
    np.testing.assert_array_equal(stream, np.concatenate(docs + [np.zeros(0, np.int32)]))


def test_packing_state_survives_json_at_every_step():
    docs = [np.arange(n, dtype=np.int32) + 1 for n in [5, 0, 17, 3, 30, 1, 9, 7]]
    rows = list(pack(docs, 7))
    for k in range(len(rows) + 1):
        iterator = iter(pack(docs, 7))
        take(iterator, k)
        state = json.loads(json.dumps(iterator.get_state()))  # what grain's orbax handler does
        resumed = iter(pack(docs, 7))
        resumed.set_state(state)
        assert_same_batches(list(resumed), rows[k:])


# --- the train and eval pipelines ----------------------------------------------------------------


def check_fragments(batch, docs):
    """Every fragment is a contiguous slice of one document; interior boundaries are document boundaries."""
    texts = ["".join(map(chr, d)) for d in docs]  # chr keeps one character per token, so `in` is exact
    for tokens, segments, positions in zip(batch["tokens"], batch["segment_ids"], batch["positions"], strict=True):
        assert (segments > 0).all(), "an endless stream needs no padding"
        for s in range(1, segments.max() + 1):
            fragment = tokens[segments == s]
            np.testing.assert_array_equal(positions[segments == s], np.arange(len(fragment)))
            text = "".join(map(chr, fragment))
            if s > 1:
                assert any(t.startswith(text) for t in texts), "later fragments in a row start their document"
            if s < segments.max():
                assert fragment[-1] == tok.eos_id, "earlier fragments end their document"
            assert any(text in t for t in texts)


def test_train_batches_are_packed_fragments_of_documents(fake_data_dir):
    spec = make_spec(fake_data_dir)
    batches = take(make_train_iterator(spec, tok, process_index=0, process_count=1), 20)
    docs = documents(load_sources(spec)["train"])
    for batch in batches:
        assert batch.keys() == {"tokens", "segment_ids", "positions"}
        assert all(v.shape == (4, 64) and v.dtype == np.int32 for v in batch.values())
        check_fragments(batch, docs)


def test_each_epoch_is_a_new_permutation_of_the_documents(fake_data_dir):
    spec = make_spec(fake_data_dir, num_shards=1)
    docs = documents(load_sources(spec)["train"])
    epoch_len = sum(len(d) for d in docs)
    num_batches = math.ceil(2 * epoch_len / (4 * 64))
    iterator = make_train_iterator(spec, tok, process_index=0, process_count=1)
    stream = np.concatenate([batch["tokens"].ravel() for batch in take(iterator, num_batches)])
    first, second = stream[:epoch_len], stream[epoch_len : 2 * epoch_len]
    for epoch in (first, second):  # EOS ends each document, so splitting after it recovers them
        found = np.split(epoch, np.flatnonzero(epoch == tok.eos_id)[:-1] + 1)
        assert sorted(map(tuple, found)) == sorted(map(tuple, docs))
    assert not np.array_equal(first, second)


def test_same_seed_same_batches_other_seed_other_batches(fake_data_dir):
    def first_batches(seed):
        spec = make_spec(fake_data_dir, seed=seed)
        return take(make_train_iterator(spec, tok, process_index=0, process_count=1), 5)

    assert_same_batches(first_batches(0), first_batches(0))
    other = first_batches(1)
    assert not any(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first_batches(0), other, strict=True))


@pytest.mark.parametrize("num_shards", [2, 4])
def test_one_process_equals_two_processes_row_for_row(fake_data_dir, num_shards):
    spec = make_spec(fake_data_dir, num_shards=num_shards, global_batch_size=8, seq_len=32)

    def train(index, count):
        return take(make_train_iterator(spec, tok, process_index=index, process_count=count), 6)

    def evals(index, count):
        return make_eval_batches(spec, tok, num_batches=4, process_index=index, process_count=count)

    for batches in (train, evals):
        single = batches(0, 1)
        halves = zip(batches(0, 2), batches(1, 2), strict=True)
        joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in halves]
        assert single[0]["tokens"].shape == (8, 32) and joined[0]["tokens"].shape == (8, 32)
        assert_same_batches(single, joined)


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_checkpoint_restore_resumes_exactly(fake_data_dir, tmp_path, prefetch_batches):
    spec = make_spec(fake_data_dir, seq_len=48)
    iterator = make_train_iterator(spec, tok, process_index=0, process_count=1, prefetch_batches=prefetch_batches)
    take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = take(iterator, 3)
        fresh = make_train_iterator(spec, tok, process_index=0, process_count=1, prefetch_batches=prefetch_batches)
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same_batches(take(fresh, 3), expected)


def test_eval_batches_are_deterministic_and_repeat_a_small_split(fake_data_dir):
    spec = make_spec(fake_data_dir)
    source = load_sources(spec)["eval"]
    docs = documents(source)
    shard_tokens = sum(len(d) for d in docs[::2])
    num_batches = 2 * math.ceil(shard_tokens / (2 * 64))  # twice what shard 0 holds
    batches = make_eval_batches(spec, tok, num_batches=num_batches, process_index=0, process_count=1)
    assert len(batches) == num_batches
    again = make_eval_batches(spec, tok, num_batches=num_batches, process_index=0, process_count=1)
    assert_same_batches(batches, again)
    for batch in batches:
        check_fragments(batch, docs)
    # No shuffle: shard 0 (rows 0-1) starts with record 0, shard 1 (rows 2-3) with record 1.
    for row, doc in ((0, docs[0]), (2, docs[1])):
        n = min(len(doc), 64)
        np.testing.assert_array_equal(batches[0]["tokens"][row, :n], doc[:n])


@pytest.mark.parametrize(
    "overrides, process_count, message",
    [
        (dict(num_shards=3), 2, "data.num_shards=3"),
        (dict(num_shards=0), 1, "data.num_shards=0"),
        (dict(num_shards=4, global_batch_size=6), 1, "train.batch_size=6"),
        (dict(name="no_such_dataset_anywhere"), 1, "data.name='no_such_dataset_anywhere'"),
        (dict(text_key="body"), 1, "data.text_key='body'"),
        (dict(eval_split="test"), 1, "data.eval_split='test'"),
        (dict(num_shards=16, global_batch_size=16), 1, "data.num_shards=16 leaves shard .* empty"),
    ],
)
def test_bad_specs_name_the_config_field(fake_data_dir, overrides, process_count, message):
    spec = make_spec(fake_data_dir, **overrides)
    with pytest.raises(ValueError, match=message):
        make_eval_batches(spec, tok, num_batches=1, process_index=0, process_count=process_count)


def test_process_index_out_of_range(fake_data_dir):
    with pytest.raises(ValueError, match="process_index=2"):
        make_train_iterator(make_spec(fake_data_dir), tok, process_index=2, process_count=2)


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_spec(None).seed = 3
