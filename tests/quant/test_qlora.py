"""QLoRA: LoRA over an NF4 base is the NF4 model at init, and trains only the factors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import DecoderLM, ModelConfig, init_params
from research.peft import lora as lora_lib
from research.quant import QTensor, dequantize_params, quantize_params, quantized_model
from research.quant.qlora import init_qlora, qlora_params

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=16)
TARGET = r"attn/(query|value)$|mlp/wi/kernel$"


def test_qlora_with_b_zero_is_the_nf4_model_and_trains_only_the_factors():
    model = DecoderLM(CFG)
    params = jax.jit(lambda key: nn.unbox(init_params(model, key)))(jax.random.key(0))
    base_q = quantize_params(params, "nf4", group_size=16, double_quant=True, exclude="embed")
    lora = init_qlora(base_q, target=TARGET, rank=4, rng=jax.random.key(1))
    assert set(lora["block_0"]["attn"]) == {"query", "value"}
    assert lora["block_1"]["mlp"]["wi"]["kernel"]["b"].shape == (4, 64)
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, CFG.vocab_size)
    qmodel = quantized_model(model)
    forward = jax.jit(lambda lora, tokens: qmodel.apply({"params": qlora_params(base_q, lora, alpha=8.0)}, tokens))

    # B = 0: the NF4 model. The update adds exact zeros to the dequantized W0, but XLA
    # fuses the two graphs differently, so allow float32 reassociation noise (~1e-7 relative).
    nf4_logits = jax.jit(qmodel.apply)({"params": base_q}, tokens)
    np.testing.assert_allclose(np.asarray(forward(lora, tokens)), np.asarray(nf4_logits), rtol=0, atol=5e-6)
    # Only the targeted weights leave the quantized tree; the others stay packed.
    effective = jax.eval_shape(lambda: qlora_params(base_q, lora, alpha=8.0))
    assert not isinstance(effective["block_0"]["attn"]["query"], QTensor)
    assert isinstance(effective["block_0"]["attn"]["key"], QTensor)

    # Gradients reach the factors (B first: with B = 0, A's gradient is zero).
    def loss(lora):
        return jnp.mean(forward(lora, tokens) ** 2)

    grads = jax.grad(loss)(lora)
    assert float(jnp.abs(grads["block_0"]["attn"]["query"]["b"]).max()) > 0
    assert float(jnp.abs(grads["block_0"]["attn"]["query"]["a"]).max()) == 0

    # A nonzero update: the same as merging LoRA into the dequantized float weights.
    lora = jax.tree.map(lambda x: x + 0.05, lora)
    merged = lora_lib.merge(dequantize_params(base_q), lora, alpha=8.0)
    np.testing.assert_allclose(
        np.asarray(forward(lora, tokens)),
        np.asarray(jax.jit(model.apply)({"params": merged}, tokens)),
        rtol=1e-5,
        atol=1e-5,
    )
