"""Resuming the train iterator around an epoch boundary reproduces the uninterrupted stream.

Each shard reshuffles its records every epoch, and its packed rows run across the
boundary (the last document of one epoch and the first of the next share a row), so
a saved state there must capture the epoch as well as the position in it.
"""

import json

import jax.numpy as jnp
import numpy as np

from research.data import ByteTokenizer, DataSpec, load_sources, make_train_iterator
from research.train import checkpoint

tok = ByteTokenizer()


def spec_for(data_dir) -> DataSpec:
    # ~27 KB of tokens per shard, 1 KB per shard per batch: an epoch is ~27 batches, and the two
    # shards (58 records each) cross their boundaries at different steps.
    return DataSpec(
        name="python_stdlib", data_dir=data_dir, text_key="text", train_split="train", eval_split="validation",
        seq_len=256, global_batch_size=8, num_shards=2, seed=0,
    )  # fmt: skip


def assert_same(a, b, where):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{where}, batch {i}, {key}")


def epochs(state, records_per_shard):
    """The epoch of the document each shard is cutting: its parent's index // records (grain's repeat)."""
    return [p["parent"]["next_index"] // n for p, n in zip(state["parents"], records_per_shard, strict=True)]


def test_resume_around_epoch_boundaries_reproduces_the_stream(fake_data_dir, tmp_path):
    spec = spec_for(fake_data_dir)
    num_records = len(load_sources(spec)["train"])
    per_shard = [len(range(s, num_records, spec.num_shards)) for s in range(spec.num_shards)]
    iterator = make_train_iterator(spec, tok, process_index=0, process_count=1)
    states, stream = [], []
    for _ in range(70):  # ~2.5 epochs of shard 0
        states.append(iterator.get_state())
        stream.append(next(iterator))
    states.append(iterator.get_state())
    # First step whose saved state sits in epoch 1 (then 2) of shard 0; both epochs are in the window.
    boundary = [next(s for s, st in enumerate(states) if epochs(st, per_shard)[0] == e) for e in (1, 2)]
    other = next(s for s, st in enumerate(states) if epochs(st, per_shard)[1] == 1)
    assert boundary[0] != other, "the shards cross into epoch 1 at different steps"
    assert epochs(states[-1], per_shard)[0] == 2 and boundary[1] < len(stream) - 5

    # The epochs really are reshuffled: shard 0's documents (rows 0-3) come in another order.
    def doc_order(batches):
        ids = np.concatenate([b["tokens"][:4].ravel() for b in batches])
        text = (ids - tok.byte_offset).astype(np.uint8).tobytes()  # EOS becomes a stray byte: harmless
        return [int(chunk.split(b"\n")[0]) for chunk in text.split(b"# doc ")[1:] if chunk[:1].isdigit()]

    first, second = doc_order(stream[: boundary[0] - 1]), doc_order(stream[boundary[0] + 1 : boundary[1] - 1])
    assert len(first) > 20 and first[:20] != second[:20]

    # Every step of the window, through the JSON file grain's orbax handler writes: the next 3 batches.
    resumed = make_train_iterator(spec, tok, process_index=0, process_count=1)
    for s in range(len(stream) - 3):
        resumed.set_state(json.loads(json.dumps(states[s])))
        assert_same([next(resumed) for _ in range(3)], stream[s : s + 3], f"resumed at step {s}")

    # The loop's own checkpoint path (orbax, beside a train state) just before, at and just after
    # shard 0's first boundary and at the others: the whole rest of the window, across later boundaries.
    manager = checkpoint.make_manager(tmp_path / "run", keep=20, async_checkpointing=False)
    saved = sorted({boundary[0] - 1, boundary[0], boundary[0] + 1, other, boundary[1]})
    replay = make_train_iterator(spec, tok, process_index=0, process_count=1)
    for s in range(len(stream)):
        if s in saved:
            checkpoint.save(manager, s, {"step": jnp.asarray(s)}, replay)
        next(replay)
    abstract = {"step": jnp.asarray(0)}
    for s in saved:
        fresh = make_train_iterator(spec, tok, process_index=0, process_count=1)
        restored = checkpoint.restore(manager, s, abstract, fresh)
        assert int(restored["step"]) == s
        assert_same([next(fresh) for _ in range(len(stream) - s)], stream[s:], f"restored checkpoint {s}")
    manager.close()
