"""Orbax checkpoints of (train state, data iterator), and the workdir's config guard.

A workdir holds one run: `config.json` records the config that created it, so
a rerun resumes only if its config is compatible, and refuses (before writing
anything) otherwise.
"""

import json
import os

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from research.models import hf
from research.train.faults import NonFiniteError

# A resumed run must compute the same function on the same data stream.
# Other keys (train.steps, eval cadence, mesh, learning rate...) may change.
RESUME_MUST_MATCH = (
    "model",
    "data.name",
    "data.tokenizer",
    "data.vocab_size",
    "data.seq_len",
    "data.num_shards",
    "data.text_key",
    "data.train_split",
    "data.train_files",
    "train.batch_size",
    "train.seed",
)
# Keys added after workdirs were written without them: a saved config that lacks one had this value.
ADDED_LATER = {"data.train_files": ""}


def _lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def check_resume_compatible(workdir, config, extra_keys=()) -> None:
    """Raises ValueError naming every key where `config` differs from the workdir's run.

    extra_keys: more dotted keys that must match (a task's `resume_must_match`).
    """
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        ours = epath.Path(workdir) / "checkpoints"
        if ours.exists() and any(ours.iterdir()):  # we write config.json before any checkpoint
            raise ValueError(
                f"workdir {workdir} holds a checkpoints/ directory but no config.json, so it was not written "
                "by research.train; nothing was changed. Use a new --workdir"
            )
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); refusing to reuse this workdir") from None
    current = config.to_dict()
    diffs = []
    for key in (*RESUME_MUST_MATCH, "train.task", "train.init_from", *extra_keys):
        try:
            old = _lookup(saved, key)
        except KeyError:
            old = ADDED_LATER.get(key, "<missing>")
        try:
            new = _lookup(current, key)
        except KeyError:
            new = "<missing>"
        if isinstance(new, dict) and isinstance(old, dict):
            diffs += [f"{key}.{k}: {old.get(k, '<missing>')!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
        elif old != new:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    if diffs:
        raise ValueError(
            f"workdir {workdir} holds a run with an incompatible config; nothing was changed. "
            f"Use a new --workdir, or the old values. Differences: {'; '.join(diffs)}"
        )


def save_config(workdir, config) -> None:
    if jax.process_index() == 0:
        (epath.Path(workdir) / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))


def absolute(workdir) -> epath.Path:
    """Local paths made absolute (orbax refuses relative ones); gs:// and other URLs as they are."""
    return epath.Path(workdir) if "://" in str(workdir) else epath.Path(os.path.abspath(workdir))


def make_manager(workdir, *, keep: int, async_checkpointing: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_checkpointing, create=True
    )
    return ocp.CheckpointManager(absolute(workdir) / "checkpoints", options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, *, force=False) -> None:
    """Async for the state (arrays are copied off-device first), synchronous for the
    iterator's small JSON state, captured at this exact step.

    A state holding a non-finite value is never written (NonFiniteError): the train step skips
    non-finite updates, so one here means the run itself went wrong, and older checkpoints stay.
    """
    if not all_finite(state):
        raise NonFiniteError(
            f"the train state at step {step} holds non-finite values; checkpoint {step} was not written and "
            f"the older ones in {manager.directory} are kept. Lower optim.learning_rate or check the model's dtype"
        )
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
        ),
        force=force,
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
    """Restores into `abstract_state`'s shardings (the mesh may differ from the saving run's).

    The data iterator's state is per process, so the process count must match the saving run's.
    """
    _check_process_count(manager, step)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)
        ),
    )
    return restored["state"]


def _check_process_count(manager, step) -> None:
    data_dir = epath.Path(manager.directory) / str(step) / "data"
    mine = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    saved = sorted(p.name for p in data_dir.glob("process_*.json")) if data_dir.exists() else []
    if saved and not mine.exists():
        raise ValueError(
            f"checkpoint {step} in {manager.directory} holds data-iterator states {saved}, written by a run with "
            f"another process count than this one ({jax.process_count()}); resume with the same number of processes"
        )


def restore_newest_good(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """(step, state) of the newest checkpoint that restores whole and finite; (None, None) when there
    is none at all.

    A newer one that is partial, unreadable or inconsistent (e.g. a machine lost mid-write, a
    truncated array file, shapes that don't match) is reported with a warning naming its step and
    moved, untouched, to DIR/damaged_checkpoints/, so the resumed run can save that step again and
    the retention policy never counts it. Nothing is deleted. When every checkpoint is damaged,
    ValueError lists each with its error and nothing is moved.
    """
    directory = epath.Path(manager.directory)
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
        _check_process_count(manager, step)  # a config problem, not damage: raised as it is
        try:
            state = restore(manager, step, abstract_state, data_iterator)
            if not all_finite(state):
                raise ValueError("it holds non-finite values")
        except Exception as e:  # noqa: BLE001  orbax, tensorstore and JSON errors of every kind
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            logging.warning("checkpoint %d in %s is damaged and is skipped (%s)", step, directory, reason)
            damaged.append((step, reason))
            continue
        if damaged:
            _set_aside(directory, [s for s, _ in damaged])
            manager.reload()
        return step, state
    if damaged:
        found = "; ".join(f"step {s}: {r}" for s, r in damaged)
        raise ValueError(
            f"no checkpoint in {directory} can be restored, so the run can't resume and nothing was changed. "
            f"Found: {found}. Move them away to start afresh in this workdir, or use a new --workdir"
        )
    return None, None


def _set_aside(directory: epath.Path, steps) -> None:
    """Moves step directories to ../damaged_checkpoints/STEP (STEP.1, ... if that exists); process 0 only."""
    if jax.process_index() == 0:
        target_root = directory.parent / "damaged_checkpoints"
        target_root.mkdir(parents=True, exist_ok=True)
        for step in steps:
            target, n = target_root / str(step), 0
            while target.exists():
                n += 1
                target = target_root / f"{step}.{n}"
            (directory / str(step)).rename(target)
            logging.warning("damaged checkpoint %d moved to %s", step, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("research.train.checkpoint._set_aside")


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (one jitted reduction, then one sync)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return bool(_all_finite(leaves)) if leaves else True


@jax.jit
def _all_finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def latest_params(workdir, abstract_params):
    """The params of `workdir`'s newest checkpoint, restored into `abstract_params`' shapes and shardings.

    Only the params are read (orbax partial restore): no optimizer state, no
    data iterator.
    """
    workdir = absolute(workdir)
    manager = _params_reader(workdir)
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"workdir {workdir} holds no checkpoint")
    item = {"params": abstract_params}
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
                )
            ),
        )
    except Exception as e:  # noqa: BLE001  a damaged file: say which checkpoint, not just the decoder's error
        # Not an older checkpoint in its place: that would be another model than the run's.
        raise ValueError(
            f"the newest checkpoint of {workdir} (step {step}) can't be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); rerun its training with the same --workdir, "
            "which sets a damaged checkpoint aside and goes on from the newest good one"
        ) from None
    finally:
        manager.close()
    return restored["state"]["params"]


def init_from(workdir, params):
    """`params` with every leaf that `workdir`'s newest checkpoint also holds (same path) replaced by it.

    For fine-tuning: a classifier head or a new adapter keeps its fresh init,
    the pretrained body is loaded. A shared path with another shape is an error
    naming the path; no shared path at all is an error too. `workdir` may be a
    Hugging Face folder (research.models.hf), converted to our parameter paths.
    """
    if hf.is_hf_folder(workdir):
        return _init_from_hf(hf.resolve(workdir), params)
    workdir = absolute(workdir)
    manager = _params_reader(workdir)
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"train.init_from={str(workdir)!r} holds no checkpoint")
    saved = manager.item_metadata(step)["state"]["params"]
    manager.close()
    flat_saved = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    flat = jax.tree_util.tree_leaves_with_path(params)
    shared = {}
    for path, leaf in flat:
        key = jax.tree_util.keystr(path)
        if key in flat_saved:
            if tuple(flat_saved[key].shape) != tuple(leaf.shape):
                raise ValueError(
                    f"train.init_from: parameter {key} has shape {tuple(flat_saved[key].shape)} in {workdir}"
                    f" but {tuple(leaf.shape)} in this model"
                )
            shared[key] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if not shared:
        raise ValueError(f"train.init_from={str(workdir)!r} shares no parameter path with this model")
    # Restore just the shared leaves, nested like the checkpoint.
    abstract = jax.tree_util.tree_map_with_path(
        lambda p, leaf: shared.get(jax.tree_util.keystr(p)), params, is_leaf=lambda x: x is None
    )
    loaded = latest_params(workdir, _drop_none(abstract))
    flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    return jax.tree_util.tree_map_with_path(lambda p, leaf: flat_loaded.get(jax.tree_util.keystr(p), leaf), params)


def latest_step(workdir) -> int | None:
    """The newest committed checkpoint step in `workdir`, or None (no checkpoints, or no workdir)."""
    workdir = absolute(workdir)
    if not (workdir / "checkpoints").exists():
        return None
    manager = _params_reader(workdir)
    step = manager.latest_step()
    manager.close()
    return step


def finished(workdir, steps: int) -> bool:
    """Whether `workdir` holds a run whose newest checkpoint is at or past `steps`."""
    step = latest_step(workdir)
    return step is not None and step >= steps


def _params_reader(workdir) -> ocp.CheckpointManager:
    """A read-only manager over `workdir`'s checkpoints that knows the state item is a pytree."""
    return ocp.CheckpointManager(
        workdir / "checkpoints",
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False),  # reads only; never makes a directory
    )


def _init_from_hf(folder, params):
    converted = hf.flat_params(hf.load_pretrained(str(folder))[1])

    def pick(path, leaf):
        key = "/".join(str(getattr(p, "key", p)) for p in path)
        if key not in converted:
            return leaf
        if converted[key].shape != tuple(leaf.shape):
            raise ValueError(f"train.init_from: parameter {key} has shape {converted[key].shape} in {folder}"
                             f" but {tuple(leaf.shape)} in this model")  # fmt: skip
        return jax.device_put(converted[key].astype(leaf.dtype), getattr(leaf, "sharding", None))

    out = jax.tree_util.tree_map_with_path(pick, params)
    if all(a is b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True)):
        raise ValueError(f"train.init_from={str(folder)!r} shares no parameter path with this model")
    return out


def _drop_none(tree):
    if isinstance(tree, dict):
        out = {k: _drop_none(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    return tree
