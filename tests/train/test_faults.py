"""Runs that go wrong: non-finite steps, damaged checkpoints, stop signals (research.train.faults).

The SIGTERM-then-resume run, compared bitwise with an uninterrupted one, is in
tests/train/test_end_to_end.py (it shares that file's reference run).
"""

import os
import pathlib
import shutil
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import logging as absl_logging
from etils import epath

from research.train import checkpoint, loop
from research.train.faults import NonFiniteError, NonfiniteStreak, StopRequests
from research.train.metrics import read_metrics
from research.train.state import TrainState
from research.train.step import train_step
from research.train.tasks import task_config

# --- the step: a non-finite loss or gradient changes nothing ----------------------------------------


def linear_state():
    params = {"w": jnp.arange(4.0), "b": jnp.ones(())}
    return TrainState.create(apply_fn=None, params=params, tx=optax.adamw(0.1))


def loss_fn(params, frozen, batch, rng):
    del frozen, rng
    y = jnp.sum(params["w"] * batch["x"]) + params["b"]
    return y**2 * batch["scale"], jnp.ones(()), {}


@pytest.mark.parametrize("scale", [np.nan, np.inf])
def test_nonfinite_step_leaves_params_and_optimizer_state(scale):
    step = jax.jit(lambda s, b: train_step(s, b, grad_accum_steps=1, learning_rate_fn=lambda _: 0.1, loss_fn=loss_fn))
    state = linear_state()
    good = {"x": jnp.ones(4), "scale": jnp.ones(())}
    state, metrics = step(state, good)
    assert float(metrics["nonfinite"]) == 0.0
    before = jax.device_get(state)
    after, metrics = step(state, {"x": jnp.ones(4), "scale": jnp.asarray(scale, jnp.float32)})
    assert float(metrics["nonfinite"]) == 1.0
    after = jax.device_get(after)
    leaves = lambda s: jax.tree.leaves((s.params, s.opt_state))  # noqa: E731
    for a, b in zip(leaves(before), leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == int(before.step) + 1  # it counts batches consumed
    moved, metrics = step(jax.device_put(after), good)  # and the next finite step updates again
    assert float(metrics["nonfinite"]) == 0.0
    assert not np.array_equal(jax.device_get(moved.params["w"]), after.params["w"])


def test_streak_counts_steps_in_a_row_and_names_them():
    streak = NonfiniteStreak(3)
    streak.add([1, 2, 3, 4], [0, 1, 1, 0])  # two in a row, then a finite one resets the count
    streak.add([5, 6], [1, 1])
    with pytest.raises(NonFiniteError, match=r"steps 5-7: 3 train steps in a row.*max_nonfinite_steps=3"):
        streak.add([7, 8], [1, 1])


def test_window_leaves_skipped_steps_out_of_the_means():
    def m(loss, tokens, skipped):
        return {"loss": loss, "target_tokens": tokens, "grad_norm": 1.0, "learning_rate": 0.1, "nonfinite": skipped}

    out = loop.window_metrics([m(1.0, 10, 0), m(np.nan, 10, 1), m(4.0, 30, 0)])
    assert out["nonfinite_steps"] == 1 and out["loss"] == pytest.approx((10 + 120) / 40)
    assert loop.window_metrics([m(np.nan, 10, 1)]) == {"nonfinite_steps": 1}


# --- checkpoints: never non-finite, damaged ones skipped -------------------------------------------------

PARAMS = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32), "b": jax.ShapeDtypeStruct((8,), jnp.float32)}
ABSTRACT = {"params": PARAMS}


def saved_state(step):
    return {"params": {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step}}


def iterator():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """Steps 10, 20, 30 of a fake run: the state is the step everywhere, the iterator is step/10 items on."""
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    manager = checkpoint.make_manager(workdir, keep=5, async_checkpointing=False)
    it = iterator()
    for step in (10, 20, 30):
        next(it)
        checkpoint.save(manager, step, saved_state(step), it, force=True)
    manager.close()
    return workdir


def files_under(path, parent_name=None):
    return [p for p in pathlib.Path(path).rglob("*") if p.is_file() and parent_name in (None, p.parent.name)]


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "truncated array files": lambda d: [truncate(p) for p in files_under(d / "state", "d")],
    "missing metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "unreadable iterator state": lambda d: (d / "data" / "process_0-of-1.json").write_text('{"half'),
    "half-written step directory": lambda d: [shutil.rmtree(d), (d / "state").mkdir(parents=True)],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, three_checkpoints, damage, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(three_checkpoints, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "30")
    newest = workdir / "checkpoints" / "30"
    before = sorted(str(p.relative_to(newest)) for p in files_under(newest))
    manager = checkpoint.make_manager(workdir, keep=5, async_checkpointing=False)
    it = iterator()
    with caplog.at_level("WARNING", logger=absl_logging.ABSLLogger.root.name):
        step, state = checkpoint.restore_newest_good(manager, ABSTRACT, it)
    assert step == 20 and float(state["params"]["w"][0, 0]) == 20.0 and next(it) == 2
    assert "checkpoint 30" in caplog.text and "damaged" in caplog.text
    moved = workdir / "damaged_checkpoints" / "30"  # set aside untouched, not deleted
    assert sorted(str(p.relative_to(moved)) for p in files_under(moved)) == before
    assert manager.all_steps() == [10, 20]
    checkpoint.save(manager, 30, saved_state(31), it, force=True)  # the resumed run can save step 30 again
    manager.wait_until_finished()
    assert checkpoint.restore_newest_good(manager, ABSTRACT, iterator())[0] == 30
    manager.close()


def test_reading_a_damaged_newest_checkpoint_as_a_model_names_it(tmp_path, three_checkpoints):
    workdir = tmp_path / "run"
    shutil.copytree(three_checkpoints, workdir)
    assert float(checkpoint.latest_params(workdir, PARAMS)["w"][0, 0]) == 30.0
    DAMAGE["truncated array files"](workdir / "checkpoints" / "30")
    with pytest.raises(ValueError, match=r"newest checkpoint of .*run \(step 30\) can't be read .*rerun its training"):
        checkpoint.latest_params(workdir, PARAMS)


def test_every_checkpoint_damaged_is_an_error_listing_them_and_nothing_moves(tmp_path, three_checkpoints):
    workdir = tmp_path / "run"
    shutil.copytree(three_checkpoints, workdir)
    for step in (10, 20, 30):
        DAMAGE["missing metadata"](workdir / "checkpoints" / str(step))
    manager = checkpoint.make_manager(workdir, keep=5, async_checkpointing=False)
    with pytest.raises(ValueError, match=r"no checkpoint .* can be restored.*step 30: .*step 20: .*step 10: "):
        checkpoint.restore_newest_good(manager, ABSTRACT, iterator())
    assert manager.all_steps() == [10, 20, 30] and not (workdir / "damaged_checkpoints").exists()


def test_nonfinite_state_is_never_written(tmp_path):
    manager = checkpoint.make_manager(tmp_path / "run", keep=5, async_checkpointing=False)
    bad = {"params": {"w": jnp.full((64, 64), jnp.nan), "b": jnp.arange(8.0)}}
    with pytest.raises(NonFiniteError, match="step 5 holds non-finite values; checkpoint 5 was not written"):
        checkpoint.save(manager, 5, bad, iterator(), force=True)
    assert manager.all_steps() == [] and not list((tmp_path / "run" / "checkpoints").iterdir())


def test_a_checkpoint_directory_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "7" / "weights.bin").write_bytes(b"not orbax")
    with pytest.raises(ValueError, match="checkpoints/ directory but no config.json"):
        checkpoint.check_resume_compatible(tmp_path, task_config("lm"))


# --- signals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_requests_a_stop_and_a_second_one_acts_as_usual(sig):
    previous = signal.getsignal(sig)
    with StopRequests() as stop:
        assert not stop.due(1, at_log_point=True)
        signal.raise_signal(sig)
        assert stop.due(2, at_log_point=False) and stop.signum == sig
        if sig == signal.SIGINT:  # the second Ctrl-C: the usual KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(sig)
    assert signal.getsignal(sig) is previous


# --- the loop: skipped steps are counted, a streak stops the run ---------------------------------------------


def tiny_lm(data_dir, steps):
    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(data_dir=data_dir, seq_len=32)
    c.train.update(steps=steps, batch_size=8, checkpoint_every=2, eval_every=1000, eval_batches=1, log_every=2)
    return c


def poisoned(bad_steps):
    """research.train.step.train_step whose loss is NaN at the given 0-based steps (inside the jit)."""

    def step(state, batch, frozen=None, *, loss_fn, **kwargs):
        def bad_loss(params, frozen, batch, rng):
            total, count, sums = loss_fn(params, frozen, batch, rng)
            return jnp.where(jnp.isin(state.step, jnp.asarray(bad_steps)), jnp.nan, total), count, sums

        return train_step(state, batch, frozen, loss_fn=bad_loss, **kwargs)

    return step


@pytest.mark.slow  # one run of the loop (a one-layer model)
def test_loop_skips_nonfinite_steps_and_stops_after_a_streak(tmp_path, data_dir, monkeypatch):
    c = tiny_lm(data_dir, steps=12)
    c.train.update(max_nonfinite_steps=3, keep_checkpoints=10)
    # Steps 3-4 (1-based) are two in a row: skipped, the run goes on. From step 7 on: the third stops it.
    monkeypatch.setattr(loop, "train_step", poisoned([2, 3, *range(6, 12)]))
    with pytest.raises(NonFiniteError, match="steps 7-9: 3 train steps in a row"):
        loop.train(c, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    skipped = {m["step"]: m["nonfinite_steps"] for m in metrics if "nonfinite_steps" in m}
    assert skipped == {2: 0, 4: 2, 6: 0, 8: 2, 10: 2}
    assert np.isfinite([m["loss"] for m in metrics if "loss" in m]).all()  # skipped steps are out of the means
    manager = checkpoint.make_manager(epath.Path(tmp_path / "run"), keep=5, async_checkpointing=False)
    assert manager.all_steps() == [2, 4, 6, 8]  # not 10: the streak reached the limit first
    manager.close()
