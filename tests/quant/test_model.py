"""Models run on quantized parameter trees: same function as on the dequantized floats."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.config import default_config, validate
from research.decode import generate
from research.models import DecoderLM, ModelConfig, init_params
from research.quant import (
    QTensor,
    dequantize_params,
    param_bytes,
    quantize_params,
    quantized_model,
)

CFG = ModelConfig(
    vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, ffn="swiglu", max_len=24
)


@pytest.fixture(scope="module")
def model_and_params():
    model = DecoderLM(CFG)
    return model, jax.jit(lambda key: nn.unbox(init_params(model, key)))(jax.random.key(0))  # jit: one compile


@pytest.mark.parametrize("fmt,double_quant", [("int8", False), ("int4", False), ("nf4", True)])
def test_logits_on_quantized_equal_logits_on_dequantized(model_and_params, fmt, double_quant):
    model, params = model_and_params
    q = quantize_params(params, fmt, group_size=16, double_quant=double_quant, exclude="embed")
    assert isinstance(q["block_0"]["attn"]["query"], QTensor) and not isinstance(q["embed"]["embedding"], QTensor)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)
    on_quantized = jax.jit(quantized_model(model).apply)({"params": q}, tokens)
    on_floats = jax.jit(model.apply)({"params": dequantize_params(q)}, tokens)
    np.testing.assert_array_equal(np.asarray(on_quantized), np.asarray(on_floats))
    # ...and it is a quantization, not the original: close to but not equal to the float model
    original = jax.jit(model.apply)({"params": params}, tokens)
    assert 0 < float(jnp.max(jnp.abs(on_quantized - original))) < 0.5 * float(jnp.max(jnp.abs(original)))


def test_generation_runs_on_quantized_weights(model_and_params):
    model, params = model_and_params
    q = quantize_params(params, "nf4", group_size=16, double_quant=True)
    prompts = [[5, 6, 7], [8, 9]]
    got = generate(quantized_model(model), q, prompts, max_new_tokens=6)
    want = generate(model, dequantize_params(q), prompts, max_new_tokens=6)
    assert got == want and all(len(r) == 6 for r in got)


def test_quantized_tree_stores_fewer_bytes(model_and_params):
    _, params = model_and_params
    full = param_bytes(params)
    by_format = {f: param_bytes(quantize_params(params, f, group_size=16, exclude="embed")) for f in ("int8", "nf4")}
    embed = params["embed"]["embedding"].nbytes
    assert by_format["int8"] < embed + (full - embed) * 0.35  # 1 byte + 4/16 bytes of scale per weight
    assert by_format["nf4"] < embed + (full - embed) * 0.25  # half a byte + 4/16
    assert by_format["nf4"] < by_format["int8"]


def test_every_target_weight_is_quantized_along_its_contraction_axes(model_and_params):
    _, params = model_and_params
    q = quantize_params(params, "int8", group_size=-1)  # embeddings too
    attn = q["block_0"]["attn"]
    assert attn["query"].contract_axes == (0,) and attn["out"].contract_axes == (0, 1)
    assert q["embed"]["embedding"].contract_axes == (1,)
    assert attn["out"].scales.shape == (1, CFG.d_model)  # per output channel
    norms = [p for p in jax.tree.leaves(q, is_leaf=lambda x: isinstance(x, QTensor)) if not isinstance(p, QTensor)]
    assert norms and all(p.ndim == 1 for p in norms)  # vectors stay float


def test_bad_targets_and_group_sizes_name_the_parameter(model_and_params):
    _, params = model_and_params
    with pytest.raises(ValueError, match="quant.targets='nothing_here'"):
        quantize_params(params, "int8", targets="nothing_here")
    with pytest.raises(
        ValueError, match=r"group_size=24 must divide parameter block_0/attn/\w+'s contraction dimension 32"
    ):
        quantize_params(params, "int4", group_size=24)


def test_config_validation_names_the_field():
    c = default_config()
    c.quant.format = "int3"
    with pytest.raises(ValueError, match="quant.format='int3'"):
        validate(c)
    c = default_config()
    c.quant.update(format="nf4", group_size=256)  # d_model 384 = 1.5 groups
    with pytest.raises(ValueError, match="quant.group_size=256 does not divide model.d_model=384"):
        validate(c)
    c.quant.group_size = 5
    with pytest.raises(ValueError, match="must be even"):
        validate(c)
    c = default_config()
    c.quant.exclude = "("
    with pytest.raises(ValueError, match="quant.exclude"):
        validate(c)
    c.quant.update(exclude="embed", format="int8", group_size=-1)
    validate(c)
