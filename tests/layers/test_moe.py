"""Mixture of Experts: routing and combine vs a per-token loop, capacity vs dropless, losses,
gradients, expert-parallel sharding, decoding, config errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.config import default_config, model_config, validate
from research.decode import init_cache, left_pad
from research.layers.moe import MoE, load_balancing_loss, reference_moe, route
from research.models import DecoderLM, ModelConfig, init_params
from research.train.loop import check_batch_fits_mesh
from research.train.sharding import BATCH_AXES, LOGICAL_RULES, logical_shardings, make_mesh
from research.train.state import make_optimizer, state_shapes
from tests.train.harness import assert_same_update, linear_first_update, one_step

B, S, D, E = 2, 12, 8, 4


def layer_and_params(**kw):
    kw = dict(num_experts=E, top_k=2, hidden_dim=16, kind="swiglu") | kw
    layer = MoE(**kw)
    x = jax.random.normal(jax.random.key(0), (B, S, D))
    params = nn.unbox(layer.init(jax.random.key(1), x)["params"])
    # A larger router than the Switch init, so top-k choices are clear-cut and float noise can't flip them.
    params["router"] = params["router"] * 30
    valid = np.ones((B, S), bool)
    valid[1, -3:] = False  # padding: routed nowhere, counted nowhere
    return layer, params, x, valid


def apply(layer, params, x, valid):
    return layer.apply({"params": params}, x, jnp.asarray(valid), mutable=["losses", "metrics"])


def reference_router_stats(x, valid, router, top_k):
    """The module docstring's definitions in float64 numpy, over valid tokens only.

    load f_i = share of the valid (token, choice) assignments that go to expert i; P_i = mean
    router probability; aux = E sum_i f_i P_i; z = mean logsumexp(logits)^2; imbalance = E max_i f_i.
    """
    logits = np.asarray(x, np.float64) @ np.asarray(router, np.float64)  # [b, s, E]
    logits = logits[np.asarray(valid)]  # [valid tokens, E]: padding is routed nowhere, counted nowhere
    top = logits.max(-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
    probs = np.exp(logits - lse[:, None])
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    load = np.bincount(chosen.ravel(), minlength=E) / chosen.size
    aux = E * np.sum(load * probs.mean(0))
    return {"load": load, "aux": aux, "z": np.mean(lse**2), "imbalance": E * load.max()}


@pytest.mark.parametrize(
    "kind,top_k,renormalize,dropless,factor,capacity",
    [
        ("swiglu", 2, True, False, 1.0, 6),  # ceil(1.0 * 12 tokens * 2 / 4 experts) = 6 slots; drops tokens
        ("gelu", 1, False, False, 0.5, 2),  # Switch-style top-1, tight: ceil(0.5 * 12 * 1 / 4) = ceil(1.5) = 2
        ("geglu", 2, False, True, 1.0, None),
        ("relu", 1, True, True, 1.0, None),
    ],
)
def test_equals_per_token_reference(kind, top_k, renormalize, dropless, factor, capacity):
    layer, params, x, valid = layer_and_params(
        kind=kind, top_k=top_k, renormalize=renormalize, dropless=dropless, capacity_factor=factor
    )
    y, aux = apply(layer, params, x, valid)
    weights = {k: v for k, v in params.items() if k != "router"}
    ref, kept = reference_moe(
        x, valid, params["router"], weights, kind=kind, top_k=top_k, renormalize=renormalize, capacity=capacity
    )
    np.testing.assert_allclose(y, ref, atol=2e-5)  # float32 vs float64 over d=8, f=16 sums
    metrics, losses = aux["metrics"], aux["losses"]
    dropped = float(metrics["moe_dropped_fraction"][0])
    np.testing.assert_allclose(dropped, 1 - kept.sum() / (valid.sum() * top_k), atol=1e-6)
    if not dropless:
        assert dropped > 0  # the capacity really binds in these cases
    assert np.all(np.asarray(y)[~valid] == 0)  # padding gets no expert output
    # The sown metrics and losses against the definitions, weighted as configured. load is a
    # ratio of small counts (exact up to float32 rounding); the losses are float32 means of
    # O(1)-O(100) terms vs float64: 1e-5 relative.
    ref = reference_router_stats(x, valid, params["router"], top_k)
    assert metrics["moe_load"][0].shape == (E,)
    np.testing.assert_allclose(metrics["moe_load"][0], ref["load"], atol=1e-6)
    np.testing.assert_allclose(metrics["moe_imbalance"][0], ref["imbalance"], rtol=1e-6)
    np.testing.assert_allclose(metrics["moe_aux_loss"][0], ref["aux"], rtol=1e-5)
    np.testing.assert_allclose(metrics["moe_z_loss"][0], ref["z"], rtol=1e-5)
    np.testing.assert_allclose(losses["moe_aux"][0], layer.aux_weight * ref["aux"], rtol=1e-5)
    np.testing.assert_allclose(losses["moe_z"][0], layer.z_weight * ref["z"], rtol=1e-5)


def test_infinite_capacity_equals_dropless():
    layer, params, x, valid = layer_and_params(capacity_factor=E / 2)  # capacity = every token of a row
    ragged = layer.clone(dropless=True)
    y_cap, aux_cap = apply(layer, params, x, valid)
    y_drop, _ = apply(ragged, params, x, valid)
    assert float(aux_cap["metrics"]["moe_dropped_fraction"][0]) == 0
    np.testing.assert_allclose(y_cap, y_drop, atol=1e-5)

    # ...and so are their gradients (ragged_dot's transpose vs the einsums'), router included.
    def loss(p, layer):
        y, aux = apply(layer, p, x, valid)
        return jnp.sum(y * jnp.sin(jnp.arange(D))) + sum(jax.tree.leaves(aux["losses"]))

    g_cap = jax.jit(jax.grad(loss), static_argnums=1)(params, layer)
    g_drop = jax.jit(jax.grad(loss), static_argnums=1)(params, ragged)
    for a, b in zip(jax.tree.leaves(g_cap), jax.tree.leaves(g_drop), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_aux_loss_is_one_when_balanced_and_grows_with_imbalance():
    rng = np.random.default_rng(0)
    tokens, k = 64, 2
    # Balanced assignments (every expert gets 1/E of them) with arbitrary probabilities: exactly 1.
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((tokens, E)), jnp.float32))
    experts = jnp.asarray([[(t + r) % E for r in range(k)] for t in range(tokens)], jnp.int32)
    valid = jnp.ones((tokens,), bool)
    aux, load = load_balancing_loss(probs, experts, valid, E)
    np.testing.assert_allclose(load, np.full(E, 1 / E), atol=1e-7)
    np.testing.assert_allclose(aux, 1.0, atol=1e-6)
    # Routing through the router: a growing bias towards expert 0 raises the loss monotonically.
    logits = jnp.asarray(rng.standard_normal((tokens, E)), jnp.float32)
    values = []
    for bias in (0.0, 1.0, 2.0, 4.0, 8.0):
        p, _, chosen = route(logits.at[:, 0].add(bias), 1, False)
        values.append(float(load_balancing_loss(p, chosen, valid, E)[0]))
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] > 3.5  # nearly everything on one expert: the loss approaches E = 4


def test_gradients_reach_the_router_through_the_gates():
    for dropless in (False, True):
        layer, params, x, valid = layer_and_params(dropless=dropless, aux_weight=0.0, z_weight=0.0)

        def loss(p, layer=layer, x=x, valid=valid):
            y, aux = apply(layer, p, x, valid)
            return jnp.sum(y**2) + sum(jax.tree.leaves(aux["losses"]))  # losses weigh 0: only the gates carry it

        grads = jax.grad(loss)(params)
        assert float(jnp.abs(grads["router"]).max()) > 1e-4, dropless
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_blocks_pick_moe_every_k_th_layer():
    model = DecoderLM(ModelConfig(vocab_size=61, num_layers=4, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32,
                                  moe_num_experts=4, moe_every=2, max_len=16))  # fmt: skip
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    ffn = {name: next(k for k in block if k in ("mlp", "moe")) for name, block in params.items() if "block" in name}
    assert ffn == {"block_0": "mlp", "block_1": "moe", "block_2": "mlp", "block_3": "moe"}
    assert params["block_1"]["moe"]["wo"].value.shape == (4, 32, 16)


def moe_model_config(**kw):
    c = default_config()
    c.model.update(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, ffn="swiglu", norm="rmsnorm")
    c.model.update(moe_num_experts=4, moe_every=1, moe_mlp_dim=32, **kw)
    c.data.seq_len = 32
    linear_first_update(c.optim)
    return c


def test_sharded_train_step_over_expert_equals_unsharded():
    """The train step on data=2 x expert=4 (capacity path, tokens dropped) equals one device's."""
    c = moe_model_config(moe_capacity_factor=1.0)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(3, 259, (8, 32)).astype(np.int32),
        "segment_ids": np.repeat(np.array([[1] * 20 + [2] * 10 + [0] * 2]), 8, axis=0).astype(np.int32),
        "positions": np.concatenate([np.arange(20), np.arange(10), [0, 0]])[None].repeat(8, 0).astype(np.int32),
    }
    c.mesh.update(data=1, fsdp=1, tensor=1, expert=1)
    m1, p1, p0, _, _ = one_step(c, jax.devices()[:1], batch)
    c.mesh.update(data=2, expert=4)
    m8, p8, _, _, _ = one_step(c, jax.devices()[:8], batch)
    # Tolerances as in tests/train/test_sharding.py: float32 reduction order; updates relative to their size.
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    assert_same_update(p1, p8, p0)

    # The expert weights really are split over `expert` (shapes only: nothing allocated).
    model = DecoderLM(model_config(c, 259))
    devices_mesh = make_mesh(c.mesh, jax.devices()[:8])
    with jax.set_mesh(devices_mesh), nn.logical_axis_rules(LOGICAL_RULES):
        _, shardings = state_shapes(model, make_optimizer(c.optim, 10), devices_mesh)
    assert tuple(shardings.params["block_0"]["moe"]["wo"].spec)[0] == "expert"


@pytest.mark.parametrize("dropless", [False, True])
def test_expert_parallel_layer_equals_one_device(dropless):
    """Loss, output and gradients on a data=2 x expert=4 mesh equal one device's."""
    layer, params, _, _ = layer_and_params(dropless=dropless, capacity_factor=1.0)
    # [8, S, D]: a distinct row per device, each padded differently, so a token sent back to any
    # other device's row (the all-to-all's or reduce-scatter's return path) changes the output.
    x = jax.random.normal(jax.random.key(2), (8, S, D))
    valid = jnp.arange(S)[None, :] < S - jnp.arange(8)[:, None] // 2

    def loss(p, x, valid):
        y, aux = apply(layer, p, x, valid)
        return jnp.sum(y * jnp.sin(jnp.arange(D))) + sum(jax.tree.leaves(aux["losses"])), y

    fn = jax.value_and_grad(loss, has_aux=True)
    (l1, y1), g1 = jax.jit(fn)(params, x, valid)
    mesh = make_mesh(dict(data=2, expert=4), jax.devices()[:8])
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        shardings = logical_shardings(jax.eval_shape(layer.init, jax.random.key(1), x)["params"], mesh)
        rows = NamedSharding(mesh, P(BATCH_AXES))
        compiled = jax.jit(fn, in_shardings=(shardings, rows, rows)).lower(params, x, valid).compile()
        (l8, y8), g8 = compiled(jax.device_put(params, shardings), jax.device_put(x, rows), jax.device_put(valid, rows))
    assert tuple(shardings["wo"].spec)[0] == "expert"
    # Capacity: tokens move to their experts by all-to-all. Dropless: peers' rows are gathered
    # and the partial outputs reduce-scattered (the shard_map path).
    assert ("reduce-scatter" if dropless else "all-to-all") in compiled.as_text()
    np.testing.assert_allclose(l8, l1, rtol=1e-5)  # float32 sum of ~800 O(1) terms, another order
    np.testing.assert_allclose(y8, y1, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_kv_cache_decoding_with_moe_blocks():
    """Prefill + single-token steps against the KV cache give the full forward's logits.

    capacity_factor = experts / top_k drops nothing, so the full forward (capacity path)
    and decoding (always dropless) compute the same function.
    """
    config = ModelConfig(vocab_size=61, num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=16,
                         moe_num_experts=4, moe_every=1, moe_capacity_factor=2.0)  # fmt: skip
    model = DecoderLM(config)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10]]
    continuation = np.array([[11, 12, 13], [14, 15, 16]])
    tokens, positions, seg = left_pad(prompts, max(map(len, prompts)), 0)
    step = jax.jit(lambda cache, t, p, s: model.apply({"params": params, "cache": cache}, t, positions=p,
                                                      segment_ids=s, decode=True, mutable=["cache"]))  # fmt: skip
    logits, mutated = step(init_cache(model, 2, tokens.shape[1] + 3), tokens, positions, seg)
    got, pos = [logits[:, -1]], positions[:, -1]
    for i in range(3):
        pos = pos + 1
        logits, mutated = step(mutated["cache"], continuation[:, i : i + 1], pos[:, None], np.ones((2, 1), np.int32))
        got.append(logits[:, 0])
    got = np.stack(got, axis=1)  # [2, 4, vocab]
    full = jax.jit(lambda t: model.apply({"params": params}, t))
    for row, prompt in enumerate(prompts):
        expected = full(np.array([prompt + continuation[row].tolist()]))[0, len(prompt) - 1 :]
        np.testing.assert_allclose(got[row], expected, atol=1e-4)  # float32, different summation order


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(moe_top_k=5), "model.moe_top_k=5 must be in"),
        (dict(moe_capacity_factor=0.0), "model.moe_capacity_factor must be > 0"),
        (dict(moe_capacity_factor=-1.0), "model.moe_capacity_factor must be > 0"),
        (dict(moe_every=0), "model.moe_every"),
        (dict(moe_num_experts=-1), "model.moe_num_experts"),
        (dict(moe_top_k=1), "model.moe_top_k=1 with model.moe_renormalize=True"),
    ],
)
def test_bad_configs_raise(changes, message):
    c = default_config()
    c.model.update({"moe_num_experts": 4, **changes})
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(c)


def test_top_1_routing_reaches_the_router_only_with_raw_probability_gates():
    """Why top-1 needs moe_renormalize=False: a renormalized single gate is p / p = 1, so the output
    (aux losses aside) does not depend on the router's weights; the Switch gate p does."""

    def router_grad(renormalize):
        layer, params, x, valid = layer_and_params(top_k=1, renormalize=renormalize, dropless=True)

        def output_sum(router):
            y, _ = apply(layer, {**params, "router": router}, x, valid)
            return jnp.sum(y**2)

        return np.abs(jax.grad(output_sum)(params["router"])).max()

    switch, renormalized = router_grad(False), router_grad(True)
    assert switch > 1e-3, switch
    assert renormalized < 1e-5 * switch, (renormalized, switch)  # zero up to float rounding of p / p


def test_experts_must_divide_over_the_expert_axis():
    c = default_config()
    c.model.moe_num_experts = 6
    c.mesh.expert = 4
    with pytest.raises(ValueError, match=r"model.moe_num_experts=6 must be divisible by mesh.expert=4"):
        validate(c)
    c.mesh.expert = 3
    validate(c)  # 6 over 3 is fine
    c.mesh.expert = 0
    with pytest.raises(ValueError, match=r"mesh.expert must be a positive size"):
        validate(c)


def test_batch_must_divide_over_data_fsdp_and_expert():
    c = default_config()
    c.model.moe_num_experts = 6
    c.mesh.update(data=2, expert=-1)  # expert = 4 on 8 devices: the batch splits 8 ways
    c.train.batch_size = 4
    with pytest.raises(ValueError, match=r"mesh data\*fsdp\*expert = 8 devices"):
        check_batch_fits_mesh(c, 8)
    c.train.batch_size = 8
    with pytest.raises(ValueError, match=r"model.moe_num_experts=6 must be divisible by mesh.expert=4"):
        check_batch_fits_mesh(c, 8)
    c.model.moe_num_experts = 8
    check_batch_fits_mesh(c, 8)
