"""A tiny decoder LM, its boxed and plain parameters, and a token batch, shared by the PEFT tests."""

import flax.linen as nn
import jax
import pytest

from research.models import DecoderLM, ModelConfig


@pytest.fixture(scope="session")
def tiny():
    config = ModelConfig(
        vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=24, ffn="swiglu"
    )
    model = DecoderLM(config)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 7, 40)
    boxed = model.init(jax.random.key(0), tokens)["params"]
    # One compiled forward for every test that runs the model at these shapes (eager applies cost seconds).
    return dict(model=model, boxed=boxed, params=nn.unbox(boxed), tokens=tokens, apply=jax.jit(model.apply))


def randomize(tree, seed=3, scale=0.3):
    """Every leaf replaced by noise of the same shape (e.g. LoRA's B, zero at init, made non-zero)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )
