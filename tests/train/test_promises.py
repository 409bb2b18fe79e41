"""What the README promises and no other test checks.

- A run saved on one mesh resumes on another (fewer devices, another shape) and continues
  as the uninterrupted run does: research.train.loop.train in this process, on a chosen
  subset of the 8 fake devices (the loop itself always takes them all).
- A kv-head or vocabulary dimension the mesh axis does not divide is replicated, not an error.
- The encoder and encoder-decoder tasks (mlm, classify, span_corruption, seq2seq) train
  through the loop's train step with gradient accumulation as without it.
(The data side of resuming, across an epoch boundary, is tests/data/test_epoch_resume.py.)
"""

import functools
import json
import shutil
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from research.config import model_config
from research.models import DecoderLM
from research.tokenizers import ByteTokenizer
from research.tokenizers.base import NUM_SPECIAL
from research.train import checkpoint, loop
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.state import TrainState, learning_rate_schedule, make_optimizer, state_shapes
from research.train.step import train_step
from research.train.tasks import get_task, task_config

# --- resuming on another mesh ----------------------------------------------------------------------


def lm_config(data_dir, mesh):
    c = task_config("lm")
    # One kv head (MQA) and the 263-token byte vocabulary: on a tensor axis of 2 both are replicated,
    # so the run also trains with the indivisible dimensions of the next test.
    c.model.update(num_layers=2, d_model=32, num_heads=4, num_kv_heads=1, mlp_dim=64, ffn="swiglu", norm="rmsnorm")
    c.data.update(data_dir=data_dir, seq_len=32)
    c.train.update(steps=6, batch_size=8, checkpoint_every=3, eval_every=1000, eval_batches=1, log_every=1)
    c.optim.update(warmup_steps=2)  # the resumed steps are on the decay: the schedule's position matters
    c.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh, strict=True)))
    return c


def train_on(config, workdir, num_devices):
    """research.train.loop.train on the first `num_devices` devices (the loop itself takes all of them)."""
    devices, meshes = jax.devices()[:num_devices], []
    real_check = loop.check_batch_fits_mesh

    def mesh_of(mesh_config):
        meshes.append(make_mesh(mesh_config, devices))
        return meshes[-1]

    with (
        mock.patch.object(loop, "make_mesh", mesh_of),
        mock.patch.object(loop, "check_batch_fits_mesh", lambda c, _: real_check(c, num_devices)),
    ):
        loop.train(config, workdir)
    return dict(meshes[0].shape)


def saved_params(workdir, step):
    manager = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", item_names=("state", "data"))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return jax.tree.map(np.asarray, restored["state"]["params"])


def logged_losses(workdir):
    lines = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines) if "loss" in m}


@pytest.mark.slow  # two runs of the loop
def test_resume_on_another_mesh_equals_uninterrupted(tmp_path, data_dir):
    # Uninterrupted: 6 steps on data x fsdp x tensor = 2 x 2 x 2, checkpoints at 3 and 6.
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert train_on(lm_config(data_dir, (2, 2, 2)), reference, 8) == dict(data=2, fsdp=2, expert=1, tensor=2)
    # Interrupted after step 3: the same workdir as it was then, i.e. without checkpoint 6 and the
    # later metrics (a run killed there leaves exactly this; tests/train/test_end_to_end.py kills one).
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    lines = (resumed / "metrics.jsonl").read_text().splitlines(keepends=True)
    (resumed / "metrics.jsonl").write_text("".join(x for x in lines if json.loads(x)["step"] <= 3))
    assert checkpoint.latest_step(resumed) == 3
    # Resumed on 2 devices as fsdp = 2, no data or tensor axis: every sharded parameter and Adam moment
    # is laid out differently, and restoring has to reshard them (and the data iterator continues).
    assert train_on(lm_config(data_dir, (1, 2, 1)), resumed, 2) == dict(data=1, fsdp=2, expert=1, tensor=1)

    final_ref, final_res, at_3 = saved_params(reference, 6), saved_params(resumed, 6), saved_params(reference, 3)
    ref_losses, res_losses = logged_losses(reference), logged_losses(resumed)
    assert sorted(res_losses) == sorted(ref_losses) == [1, 2, 3, 4, 5, 6]
    # Steps 4-6 ran on another mesh: the same batches and maths, float32 reduction order aside.
    np.testing.assert_allclose([res_losses[s] for s in (4, 5, 6)], [ref_losses[s] for s in (4, 5, 6)], rtol=1e-5)
    moved = 0.0
    for (path, a), b, c in zip(
        jax.tree_util.tree_leaves_with_path(final_ref), jax.tree.leaves(final_res), jax.tree.leaves(at_3), strict=True
    ):
        np.testing.assert_allclose(b, a, atol=2e-6, rtol=0, err_msg=jax.tree_util.keystr(path))
        moved = max(moved, float(np.abs(a - c).max()))
    assert moved > 5e-4  # steps 4-6 moved the weights far beyond the tolerance


# --- dimensions a mesh axis does not divide ---------------------------------------------------------


@pytest.mark.parametrize("fsdp,tensor,kv_heads", [(4, 2, 1), (2, 4, 2)])
def test_indivisible_kv_heads_and_vocab_are_replicated(fsdp, tensor, kv_heads):
    """One kv head over tensor=2 (MQA) or two over tensor=4, and the 263-token byte vocabulary over
    either: those dimensions are replicated; the divisible ones (embed over fsdp, heads and mlp over
    tensor) stay sharded. The Adam moments are laid out like their parameters. (The resume test
    above trains such a model: kv_heads=1 and vocab 263 over tensor=2.)"""
    c = task_config("lm")
    c.model.update(num_layers=2, d_model=64, num_heads=4, num_kv_heads=kv_heads, mlp_dim=128, tie_embeddings=False)
    c.data.seq_len = 16
    c.mesh.update(data=1, fsdp=fsdp, tensor=tensor)
    model = DecoderLM(model_config(c, ByteTokenizer().vocab_size))
    assert model.config.vocab_size == 263
    mesh = make_mesh(c.mesh, jax.devices()[:8])
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        abstract, shardings = state_shapes(model, make_optimizer(c.optim, 10), mesh)  # what init and restore use
    spec = lambda s: tuple(s.spec) + (None,) * (3 - len(s.spec))  # padded to rank 3
    params = shardings.params
    block = params["block_0"]
    assert spec(params["embed"]["embedding"])[:2] == (None, "fsdp")  # [vocab, embed]
    assert spec(params["lm_head"]["kernel"])[:2] == ("fsdp", None)  # [embed, vocab]
    assert spec(block["attn"]["query"]) == ("fsdp", "tensor", None)  # [embed, heads, head_dim]
    for name in ("key", "value"):
        assert spec(block["attn"][name]) == ("fsdp", None, None)  # [embed, kv_heads, head_dim]
    assert spec(block["attn"]["out"]) == ("tensor", None, "fsdp")  # [heads, head_dim, embed]
    assert spec(block["mlp"]["wi"]["kernel"])[:2] == ("fsdp", "tensor")  # [embed, mlp]
    (mu,) = [s.mu for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    for path in (("block_0", "attn", "key"), ("embed", "embedding"), ("lm_head", "kernel")):
        leaf, moment = functools.reduce(dict.get, path, params), functools.reduce(dict.get, path, mu)
        assert moment.spec == leaf.spec, path
    # Every leaf of the state splits evenly over its sharding (a NamedSharding that does not raises here,
    # as jit's out_shardings and orbax's restore would).
    for array in jax.tree.leaves(abstract):
        shard = array.sharding.shard_shape(array.shape)
        assert all(n % s == 0 for n, s in zip(array.shape, shard, strict=True))


# --- gradient accumulation in the encoder and encoder-decoder tasks ---------------------------------


_COMPILED = {}  # compiled train steps of task.loss, by everything that goes into them
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def task_setup(name, data_dir):
    c = task_config(name)
    c.model.update(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64)
    c.data.update(data_dir=data_dir, seq_len=32)
    c.train.update(batch_size=8, seed=3)
    # As in test_sharding.py: Adam's first update is ~lr * sign(g), which turns float32 summation-order
    # noise in near-zero gradients into O(lr) differences; a large eps makes it ~lr * g, linear in g.
    c.optim.update(learning_rate=1e-2, warmup_steps=0, eps=1.0)
    if name in ("span_corruption", "seq2seq"):
        c.model.position = "relative"  # the T5 recipe
        c.seq2seq.update(input_len=48, target_len=16, num_train_examples=64)
    if name == "classify":
        c.classify.packages = "json,email"  # small packages: few records to read
    task = get_task(name)(c, ByteTokenizer())
    # Host-drawn parameters of the task's own shapes: compiling the random initialisers costs far
    # more than these tiny steps, and what is checked here does not depend on the init.
    rng = np.random.default_rng(0)
    boxed = jax.eval_shape(task.init_params, jax.random.key(0))

    def draw(path, leaf):
        leaf = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        if leaf.ndim >= 2:
            return jnp.asarray(rng.normal(0, 0.2, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    state = TrainState.create(apply_fn=task.model.apply, params=params, tx=make_optimizer(c.optim, 10))
    return c, task, state, next(task.train_iterator(0, 1))


def pad_back_rows(batch, tokens, segments, extra=()):
    """Padding at the end of rows 4-7 (a quarter, half, three quarters, all of the row): micro-batches
    of one batch then hold different numbers of targets, which a per-micro-batch mean would weigh wrong."""
    batch = dict(batch)
    length = batch[tokens].shape[1]
    for key in (tokens, segments, *extra):
        batch[key] = batch[key].copy()
        for row, keep in zip((4, 5, 6, 7), (3 * length // 4, length // 2, length // 4, 0), strict=True):
            batch[key][row, keep:] = 0
    return batch


def tree_index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def same_keys_reference(loss_fn, k, seed, step):
    """The whole batch as one loss (one value_and_grad, no scan), micro-batch i still drawing its masks
    from fold_in(fold_in(key(seed), step), i), the key train_step gives micro-batch i."""

    def loss(params, frozen, batch, rng):
        del rng
        step_rng = jax.random.fold_in(jax.random.key(seed), step)
        micro = jax.tree.map(lambda x: x.reshape(k, -1, *x.shape[1:]), batch)  # contiguous rows, as train_step
        parts = [loss_fn(params, frozen, tree_index(micro, i), jax.random.fold_in(step_rng, i)) for i in range(k)]
        return jax.tree.map(lambda *xs: sum(xs), *parts)

    return loss


@pytest.mark.parametrize("name", ["mlm", "classify", "span_corruption", "seq2seq"])
def test_task_trains_with_accumulation_as_without(name, data_dir):
    c, task, state, batch = task_setup(name, data_dir)
    accum = 2 if name == "mlm" else 4  # MLM's reference below unrolls one loss per micro-batch
    if name == "mlm":
        batch = pad_back_rows(batch, "tokens", "segment_ids", ("positions",))
        eligible = (batch["segment_ids"] != 0) & (batch["tokens"] >= NUM_SPECIAL)
        counts = eligible.reshape(accum, -1).sum(1)
    elif name == "classify":
        counts = np.full(accum, 8 // accum)  # one target per row: every micro-batch weighs the same
    else:
        if name == "span_corruption":
            # Padded to seq2seq's lengths, the rows' targets cut short: more padding, and the two tasks'
            # batches then run through the same compiled steps (one model, one loss: _Seq2SeqBase's).
            s = c.seq2seq
            pad = {k: (s.input_len if k.startswith("input") else s.target_len) - v.shape[1] for k, v in batch.items()}
            batch = {k: np.pad(v, ((0, 0), (0, pad[k]))) for k, v in batch.items()}
            batch = pad_back_rows(batch, "targets", "target_segment_ids")
        counts = batch["target_segment_ids"].reshape(accum, -1).sum(1)
    if name != "classify":
        assert len(set(counts.tolist())) > 1, counts  # micro-batches with different target counts

    def step(k, loss_fn):
        key = None
        if loss_fn == task.loss:  # span_corruption and seq2seq share it, and everything it reads
            config = c.to_dict()
            del config["train"]["task"]
            shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
            key = (type(task).loss, json.dumps(config, sort_keys=True), k, json.dumps(shapes, sort_keys=True))
        cached = _COMPILED.get(key) if key is not None else None
        if cached is None:
            fn = functools.partial(
                train_step,
                grad_accum_steps=k,
                learning_rate_fn=learning_rate_schedule(c.optim, 10),
                loss_fn=loss_fn,
                seed=c.train.seed,
            )
            # The same program as under jax.jit, with less LLVM optimisation: compiling is most of this
            # test's time on a 2-core CPU (about half with these options), and both sides compile alike.
            lowered = jax.jit(fn).lower(state, jax.tree.map(jnp.asarray, batch), None)
            cached = lowered.compile(compiler_options=FAST_CPU_COMPILE), state
            if key is not None:
                _COMPILED[key] = cached
        compiled, compiled_state = cached
        # A shared program keeps the state it was compiled with: the same draws, its own apply_fn and tx.
        jax.tree.map(np.testing.assert_array_equal, compiled_state.params, state.params)
        new, metrics = compiled(compiled_state, jax.tree.map(jnp.asarray, batch), None)
        return jax.device_get(new.params), jax.device_get(metrics)

    # MLM draws its masks from the step's rng, and train_step gives micro-batch i the key
    # fold_in(step_key, i) (so a resumed run draws what an uninterrupted one would): 2 micro-batches
    # of 4 rows legitimately mask other tokens than 1 batch of 8 rows under fold_in(step_key, 0).
    # Its reference is therefore the whole batch as one loss with those same per-micro-batch keys.
    # The other tasks ignore the rng (span corruption draws its noise in the data pipeline, seeded by
    # each row's tokens), so their reference is the plain step without accumulation.
    reference_loss = same_keys_reference(task.loss, accum, c.train.seed, 0) if name == "mlm" else task.loss
    p1, m1 = step(1, reference_loss)
    pk, mk = step(accum, task.loss)
    assert set(mk) == set(m1) and {"loss", "grad_norm", "target_tokens"} <= set(mk)
    if name != "mlm":  # MLM's targets are drawn in the step
        assert float(mk["target_tokens"]) == counts.sum()
    for key in mk:
        np.testing.assert_allclose(mk[key], m1[key], rtol=2e-5, err_msg=key)
    moved = 0.0
    initial = jax.device_get(state.params)
    for (path, a), b, init in zip(
        jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(pk), jax.tree.leaves(initial), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
        moved = max(moved, float(np.abs(a - init).max()))
    assert moved > 1e-4  # the update is far above the tolerance
