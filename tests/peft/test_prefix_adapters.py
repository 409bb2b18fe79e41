"""Prefix tuning and adapters: a naive attention reference, packing isolation, cached decoding, identity init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.attention import dense_attention
from research.attention.prefix import with_prefix
from research.decode import generate
from research.peft.model import AdaptedModel, PeftSpec, init_trainable
from tests.peft.conftest import randomize


def _naive_prefix_attention(q, k, v, pk, pv, segment_ids):
    """Loops over rows and queries: softmax over [prefix; own-segment keys at or before the query]."""
    q, k, v, pk, pv = (np.asarray(x, np.float64) for x in (q, k, v, pk, pv))
    batch, length, heads, dim = q.shape
    groups = heads // k.shape[2]
    out = np.zeros_like(q)
    for b in range(batch):
        for i in range(length):
            seen = [j for j in range(i + 1) if segment_ids[b, j] == segment_ids[b, i] and segment_ids[b, j] != 0]
            for h in range(heads):
                keys = np.concatenate([pk[:, h // groups], k[b, seen, h // groups]])  # [P + n, d]
                values = np.concatenate([pv[:, h // groups], v[b, seen, h // groups]])
                logits = keys @ q[b, i, h] / np.sqrt(dim)
                p = np.exp(logits - logits.max())
                out[b, i, h] = (p / p.sum()) @ values
    return out


def test_with_prefix_matches_naive_reference():
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (2, 6, 4, 8))
    k, v = (jax.random.normal(keys[i], (2, 6, 2, 8)) for i in (1, 2))
    pk, pv = (jax.random.normal(keys[i], (3, 2, 8)) for i in (3, 4))
    segment_ids = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    out = with_prefix(dense_attention, pk, pv)(q, k, v, causal=True, segment_ids=jnp.asarray(segment_ids))
    want = _naive_prefix_attention(q, k, v, pk, pv, segment_ids)
    real = segment_ids[:, :, None, None] != 0  # padding queries' outputs are never read
    np.testing.assert_allclose(np.where(real, np.asarray(out), 0), np.where(real, want, 0), atol=1e-5)


def peft_apply(spec, model, base, trainable, *args, **kwargs):
    """The adapted model's forward (research.peft.model.AdaptedModel), eager."""
    return AdaptedModel(model, spec).apply({"params": {"trainable": trainable, "base": base}}, *args, **kwargs)


@pytest.mark.parametrize("method", ["prefix", "adapter"])
def test_packed_examples_do_not_see_each_other(tiny, method):
    """Logits of an example packed after another equal its logits alone (prefix must not leak across)."""
    model, params = tiny["model"], tiny["params"]
    spec = PeftSpec(method=method, prefix_len=3, adapter_dim=4)
    trainable = randomize(init_trainable(spec, model, tiny["boxed"], {"tokens": tiny["tokens"]}, jax.random.key(0)))
    a, b = tiny["tokens"][0, :5], tiny["tokens"][1, :7]
    packed = jnp.concatenate([a, b])[None]
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    together = peft_apply(spec, model, params, trainable, packed, positions=pos, segment_ids=seg)
    alone = peft_apply(spec, model, params, trainable, b[None])
    np.testing.assert_allclose(np.asarray(together[0, 5:]), np.asarray(alone[0]), atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "adapter"])
def test_cached_generation_matches_full_forward(tiny, method):
    # (adapters act on layer outputs, so their cached path is the base model's; prefix adds its own.)
    """research.decode's KV-cache loop, through AdaptedModel, gives the argmax rollout of full forwards."""
    model, params = tiny["model"], tiny["params"]
    spec = PeftSpec(method=method, prefix_len=2, adapter_dim=4)
    trainable = randomize(init_trainable(spec, model, tiny["boxed"], {"tokens": tiny["tokens"]}, jax.random.key(0)))
    prompt = [int(t) for t in tiny["tokens"][0, :6]]
    adapted = AdaptedModel(model, spec)
    got = generate(adapted, {"trainable": trainable, "base": params}, [prompt], max_new_tokens=4)[0]
    # One full forward over prompt + answer: greedy decoding means each answer token is the
    # argmax of the full forward's logits one position earlier.
    logits = peft_apply(spec, model, params, trainable, jnp.asarray([prompt + got]))
    assert got == [int(t) for t in jnp.argmax(logits[0, len(prompt) - 1 : -1], axis=-1)]


def test_adapters_start_as_identity_and_prefix_does_not(tiny):
    model, params, tokens = tiny["model"], tiny["params"], tiny["tokens"]
    base = model.apply({"params": params}, tokens)  # eager like peft_apply: bitwise comparable
    spec = PeftSpec(method="adapter", adapter_dim=4)
    fresh = init_trainable(spec, model, tiny["boxed"], {"tokens": tokens}, jax.random.key(0))
    # 2 layers x (attention + MLP) x (32*4 + 4 + 4*32 + 32)
    assert sum(x.size for x in jax.tree.leaves(fresh)) == 2 * 2 * (32 * 4 + 4 + 4 * 32 + 32)
    np.testing.assert_array_equal(np.asarray(peft_apply(spec, model, params, fresh, tokens)), np.asarray(base))
    moved = peft_apply(spec, model, params, randomize(fresh), tokens)
    assert np.abs(np.asarray(moved) - np.asarray(base)).max() > 1e-3
    spec = PeftSpec(method="prefix", prefix_len=3)
    prefix = init_trainable(spec, model, tiny["boxed"], {"tokens": tokens}, jax.random.key(0))
    assert prefix["block_1"]["attn"]["key"].shape == (3, 2, 8)  # [P, kv_heads, head_dim]
    assert np.abs(np.asarray(peft_apply(spec, model, params, prefix, tokens)) - np.asarray(base)).max() > 1e-3


def test_bad_spec_values_name_the_field():
    with pytest.raises(ValueError, match=r"peft.method='qlora'; choose one of"):
        PeftSpec(method="qlora").validate()
    with pytest.raises(ValueError, match=r"peft.prefix_len=0"):
        PeftSpec(method="prefix", prefix_len=0).validate()
