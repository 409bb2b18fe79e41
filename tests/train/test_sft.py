"""The "sft" task: prompt-masked loss vs a per-example reference, PEFT trains only its own tree,
and an end-to-end LoRA run on a pretrained base (checkpoint holds only LoRA, base mismatch refused)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.peft.lora import count_trainable
from research.tokenizers import ByteTokenizer
from research.train.loop import train
from research.train.runs import check_same_model, load_run
from research.train.sharding import make_mesh
from research.train.state import create_train_state, make_optimizer
from research.train.step import train_step
from research.train.tasks import task_config
from research.train.tasks_sft import SFTTask


def _config(method="lora", devices=1, **peft):
    c = task_config("sft")
    c.model.update(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64)
    c.data.update(seq_len=64)
    c.train.update(task="sft", steps=2, batch_size=2, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1)
    c.sft.update(tasks="arithmetic,reverse,sort", eval_examples=3, max_new_tokens=3, num_train_examples=100)
    c.peft.update(method=method, rank=2, prefix_len=2, adapter_dim=4, **peft)
    c.optim.warmup_steps = 0  # the first step already moves the weights
    c.mesh.update(data=devices)
    c.train.batch_size = 2 * devices
    return c


def _setup(method):
    config = _config(method)
    task = SFTTask(config, ByteTokenizer())
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        tx = make_optimizer(config.optim, 10)
        state, _ = create_train_state(task.model, tx, mesh, jax.random.key(0), init_fn=task.init_params)
        frozen = task.frozen_params(mesh)
    batch = jax.tree.map(jnp.asarray, next(task.train_iterator(0, 1)))
    return task, state, frozen, batch


def test_loss_mask_excludes_prompt_tokens():
    """The task's loss = cross-entropy of response and [EOS] tokens only, each example run alone."""
    task, state, frozen, batch = _setup("none")
    loss_sum, count, _ = jax.jit(task.loss)(state.params, frozen, batch, None)
    # Every example alone in its own row, right-padded (causal: padding never reaches earlier logits).
    rows, masks = [], []
    for i in range(batch["tokens"].shape[0]):
        for s in range(1, int(batch["segment_ids"][i].max()) + 1):
            sel = np.asarray(batch["segment_ids"][i] == s)
            rows.append(np.pad(np.asarray(batch["tokens"][i])[sel], (0, 64 - sel.sum())))
            masks.append(np.pad(np.asarray(batch["loss_mask"][i])[sel], (0, 64 - sel.sum())))
    rows, masks = np.stack(rows), np.stack(masks)
    assert len(rows) > batch["tokens"].shape[0]  # packing put several examples in a row
    assert not masks[:, 0].any()  # [BOS] is never a target
    logits = jax.jit(task.model.apply)({"params": state.params}, jnp.asarray(rows))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], rows[:, 1:])
    want_sum = float(jnp.sum(ce * masks[:, 1:]))  # the target at t+1 counts iff it is response or [EOS]
    want_count = int(masks[:, 1:].sum())
    assert float(count) == want_count == int(batch["loss_mask"].sum())
    np.testing.assert_allclose(float(loss_sum), want_sum, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prefix", "adapter"])
def test_only_peft_parameters_change(method):
    task, state, frozen, batch = _setup(method)
    before_base = jax.tree.map(np.array, frozen)
    before = jax.tree.map(np.array, state.params)
    base_count, trainable = count_trainable(frozen), count_trainable(state.params)
    assert 0 < trainable < base_count / 4
    # The optimizer holds moments of the trainable tree only (2 x its size, plus scalars).
    assert count_trainable(state.opt_state) < 2 * trainable + 16
    step = jax.jit(
        lambda s, b, f: train_step(s, b, f, grad_accum_steps=1, learning_rate_fn=lambda _: 1e-2, loss_fn=task.loss)
    )
    state, metrics = step(state, batch, frozen)
    assert np.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(before_base), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # the frozen base is untouched
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params), strict=True)
    ]
    assert any(changed)
    if method == "lora":  # every B left zero
        flat = jax.tree_util.tree_leaves_with_path(state.params)
        assert all(np.abs(np.asarray(leaf)).max() > 0 for path, leaf in flat if path[-1].key == "b")


def test_lora_run_on_a_pretrained_base(tmp_path, data_dir):
    """Pretrain 2 steps, fine-tune with LoRA: the checkpoint holds LoRA only; another base config is refused."""
    base = _config("none", devices=8)
    base.train.update(task="lm", steps=1)
    base.data.update(data_dir=data_dir)
    train(base, tmp_path / "base")
    config = _config("lora", devices=8)
    config.data.update(data_dir=data_dir)
    config.sft.base_workdir = str(tmp_path / "base")
    out = train(config, tmp_path / "sft")
    assert 0.0 <= out["exact_match"] <= 1.0 and "exact_match_sort" in out
    saved = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert saved["sft"]["base_workdir"] == str(tmp_path / "base")
    # The checkpoint's tree (orbax's metadata file): LoRA factors and their optimizer moments, no base weight.
    keys = json.loads((tmp_path / "sft" / "checkpoints" / "2" / "state" / "_METADATA").read_text())["tree_metadata"]
    params = [k for k in keys if k.startswith("('params'")]
    assert params and all(k.endswith(("'a')", "'b')")) for k in params), params
    assert all(k.endswith(("'a')", "'b')")) for k in keys if "'mu'" in k or "'nu'" in k)
    # The run as a model (research/train/runs.py): LoRA over the base, merged for decoding; the merged
    # model computes what the adapted one does, and research.sample reads the workdir.
    loaded = load_run(tmp_path / "sft")
    assert loaded.adapted.spec.method == "lora" and loaded.base is not None
    tokens = jnp.asarray([[5, 40, 41, 42, 3]])
    adapted = loaded.adapted.apply({"params": loaded.params_dict()}, tokens)
    model, merged = loaded.for_decoding()
    np.testing.assert_allclose(np.asarray(model.apply({"params": merged}, tokens)), np.asarray(adapted), atol=1e-5)
    from research.sample import print_samples

    assert len(print_samples(tmp_path / "sft", ["ab"], max_new_tokens=3, temperature=0.0, top_k=0, top_p=1.0)) == 1
    other = _config("lora")
    other.model.d_model = 64
    other.sft.base_workdir = str(tmp_path / "base")
    with pytest.raises(ValueError, match=r"model.d_model: sft.base_workdir 32, this run 64"):
        check_same_model(other, ByteTokenizer(), other.sft.base_workdir, field="sft.base_workdir")
    with pytest.raises(ValueError, match=r"peft.method='none' .* set train.init_from="):
        bad = _config("none")
        bad.sft.base_workdir = str(tmp_path / "base")
        SFTTask(bad, ByteTokenizer())


def test_qlora_trains_lora_over_a_quantized_frozen_base():
    """quant.format on an SFT LoRA run: the frozen base is stored as NF4 codes, B = 0 gives the NF4
    model's loss, and a step moves only the LoRA factors."""
    from research.quant.transform import dequantize_params, is_qtensor, param_bytes

    config = _config("lora")
    config.quant.update(format="nf4", group_size=32, double_quant=True)
    task = SFTTask(config, ByteTokenizer())
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        state, _ = create_train_state(
            task.model, make_optimizer(config.optim, 10), mesh, jax.random.key(0), init_fn=task.init_params
        )
        frozen = task.frozen_params(mesh)
    assert any(is_qtensor(x) for x in jax.tree.leaves(frozen, is_leaf=is_qtensor))
    # The base really is smaller (the float32 embedding, excluded from quantization, dominates this tiny model).
    assert param_bytes(frozen) < 0.7 * param_bytes(dequantize_params(frozen))
    batch = jax.tree.map(jnp.asarray, next(task.train_iterator(0, 1)))
    loss_sum, count, _ = jax.jit(task.loss)(state.params, frozen, batch, jax.random.key(1))
    # Reference: the plain model on the dequantized base, with no LoRA at all (B = 0).
    logits = task.model.apply(
        {"params": dequantize_params(frozen)},
        batch["tokens"],
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
    )
    from research.train.tasks_sft import sft_targets

    targets, weights = sft_targets(batch)
    want = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)
    np.testing.assert_allclose(float(loss_sum), float(want), rtol=1e-5)
    step = jax.jit(
        lambda s, b, f: train_step(s, b, f, grad_accum_steps=1, learning_rate_fn=lambda _: 1e-2, loss_fn=task.loss)
    )
    new_state, metrics = step(state, batch, frozen)
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params, new_state.params)
    assert any(jax.tree.leaves(moved))


def test_quantized_base_needs_lora():
    config = _config("adapter")
    config.quant.update(format="nf4", group_size=32)
    with pytest.raises(ValueError, match="quant.format='nf4' quantizes the frozen base of QLoRA"):
        SFTTask(config, ByteTokenizer())
