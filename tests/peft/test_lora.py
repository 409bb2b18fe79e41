"""LoRA: identity at init, merged == unmerged (an activation-space reference), unmerge, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.peft import lora as lora_lib
from tests.peft.conftest import randomize

ALL = r"attn/(query|key|value|out)$|mlp/\w+/kernel$"


def test_zero_b_at_init_leaves_logits_unchanged(tiny):
    apply, params, tokens = tiny["apply"], tiny["params"], tiny["tokens"]
    lora = lora_lib.init_lora(params, target=ALL, rank=4, rng=jax.random.key(0))
    bs = [leaf for path, leaf in lora_lib.flatten(lora).items() if path.endswith("/b")]
    assert len(bs) == 2 * 7 and all(np.all(np.asarray(b) == 0) for b in bs)
    base = apply({"params": params}, tokens)
    adapted = apply({"params": lora_lib.apply_lora(params, lora, alpha=8.0)}, tokens)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base))
    # ...and once B is non-zero the function does change (this test can fail).
    moved = apply({"params": lora_lib.apply_lora(params, randomize(lora), alpha=8.0)}, tokens)
    assert np.abs(np.asarray(moved) - np.asarray(base)).max() > 1e-3


def _unmerged_interceptor(lora, alpha):
    """Reference LoRA in activation space: y = x W0 + (alpha/r) (x A) B, at each targeted matmul.

    Attention's kernels go through Attention._einsum(eqn, x, shape, names, name, ...),
    the MLP's through nn.Dense; x's trailing axes contract with A's fan-in axes.
    """
    flat = lora_lib.flatten(lora)

    def branch(path, x):
        a, b = flat[f"{path}/a"], flat[f"{path}/b"]
        xa = jnp.tensordot(x, a, axes=a.ndim - 1)  # [batch, len, r]
        return (alpha / a.shape[-1]) * jnp.tensordot(xa, b, axes=1)  # [batch, len, *fan_out]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module_path = "/".join(context.module.path)
        if context.method_name == "_einsum":
            path = f"{module_path}/{args[4]}"
            return out + branch(path, args[1]) if f"{path}/a" in flat else out
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            path = f"{module_path}/kernel"
            return out + branch(path, args[0]) if f"{path}/a" in flat else out
        return out

    return interceptor


@pytest.mark.parametrize("target", [ALL, r"attn/out$"])
def test_merged_equals_unmerged(tiny, target):
    model, params, tokens = tiny["model"], tiny["params"], tiny["tokens"]
    lora = randomize(lora_lib.init_lora(params, target=target, rank=3, rng=jax.random.key(0)), scale=0.2)
    merged = tiny["apply"]({"params": lora_lib.merge(params, lora, alpha=6.0)}, tokens)
    with nn.intercept_methods(_unmerged_interceptor(lora, 6.0)):
        unmerged = model.apply({"params": params}, tokens)
    # float32 throughout; the two orders of summation differ by rounding only.
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=2e-5, rtol=1e-5)
    assert np.abs(np.asarray(merged) - np.asarray(tiny["apply"]({"params": params}, tokens))).max() > 1e-3


def test_unmerge_restores_base(tiny):
    params = tiny["params"]
    lora = randomize(lora_lib.init_lora(params, target=ALL, rank=2, rng=jax.random.key(0)))
    back = jax.jit(lambda p, lo: lora_lib.unmerge(lora_lib.merge(p, lo, alpha=4.0), lo, alpha=4.0))(params, lora)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_factor_shapes_names_and_count(tiny):
    boxed = tiny["boxed"]
    lora = lora_lib.init_lora(boxed, target=r"attn/(query|out)$", rank=4, rng=jax.random.key(0))
    q, o = lora["block_0"]["attn"]["query"], lora["block_0"]["attn"]["out"]
    # query [d_model, heads, head_dim]: fan-in is d_model; out [heads, head_dim, d_model]: fan-in is heads*head_dim.
    assert q["a"].value.shape == (32, 4) and q["b"].value.shape == (4, 4, 8)
    assert o["a"].value.shape == (4, 8, 4) and o["b"].value.shape == (4, 32)
    assert q["a"].names == ("embed", None) and o["b"].names == (None, "embed")
    # 2 layers x (query: 32*4 + 4*32, out: 32*4 + 4*32)
    assert lora_lib.count_trainable(lora) == 2 * 2 * (32 * 4 + 4 * 32)


def test_dropout_is_identity_in_expectation_and_off_without_rng(tiny):
    params = tiny["params"]
    lora = randomize(lora_lib.init_lora(params, target=r"attn/query$", rank=2, rng=jax.random.key(0)))
    plain = lora_lib.apply_lora(params, lora, alpha=2.0, dropout=0.5)
    np.testing.assert_array_equal(
        plain["block_0"]["attn"]["query"], lora_lib.merge(params, lora, alpha=2.0)["block_0"]["attn"]["query"]
    )
    dropped = lora_lib.apply_lora(params, lora, alpha=2.0, dropout=0.5, rng=jax.random.key(1))
    assert not np.allclose(dropped["block_0"]["attn"]["query"], plain["block_0"]["attn"]["query"])


def test_bad_pattern_names_pattern_and_paths(tiny):
    with pytest.raises(ValueError, match=r"peft.target='attn/nope'.*block_0/attn/query"):
        lora_lib.init_lora(tiny["params"], target="attn/nope", rank=2, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        lora_lib.init_lora(tiny["params"], target="attn/(", rank=2, rng=jax.random.key(0))


def test_rank_larger_than_matrix(tiny):
    # key: [32, 2, 8] seen as 32 x 16: rank 17 cannot fit.
    with pytest.raises(ValueError, match=r"peft.rank=17 is larger than the matrix of block_0/attn/key.*32 x 16"):
        lora_lib.init_lora(tiny["params"], target=r"attn/key$", rank=17, rng=jax.random.key(0))
    lora_lib.init_lora(tiny["params"], target=r"attn/key$", rank=16, rng=jax.random.key(0))
