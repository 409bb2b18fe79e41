"""QLoRA (Dettmers et al., 2023): LoRA factors trained on top of a frozen NF4-quantized base.

The base is stored quantized (NF4 with double-quantized scales, a QTensor tree);
only the LoRA factors A, B are parameters. research.peft.lora's apply_lora takes
a `dequantize` hook: each LoRA-targeted W0 is dequantized to float, the low-rank
update added, and the other quantized weights are left as QTensors for
`quantized_model(model)` to dequantize in the forward pass:

    lora = init_qlora(base_q, target=..., rank=8, rng=key)
    logits = quantized_model(model).apply({"params": qlora_params(base_q, lora, alpha=16.0)}, tokens)

Gradients reach A and B through the dequantized W0 + (alpha / r) A B; the base,
a constant input, gets none (and could not: its codes are integers).
"""

import jax

from research.peft import lora as lora_lib
from research.quant.tensor import dequantize
from research.quant.transform import dequantize_params, is_qtensor


def maybe_dequantize(x):
    """A QTensor's float weight; any other leaf as it is."""
    return dequantize(x) if is_qtensor(x) else x


def init_qlora(base_q, *, target: str, rank: int, rng, field: str = "peft.target") -> dict:
    """LoRA factors for a quantized base, shaped like its float weights (B = 0: the function is unchanged)."""
    shapes = jax.eval_shape(dequantize_params, base_q)
    return lora_lib.init_lora(shapes, target=target, rank=rank, rng=rng, field=field)


def qlora_params(base_q, lora, *, alpha: float, dropout: float = 0.0, rng=None):
    """The tree quantized_model(model) runs with: LoRA-targeted weights dequantized + A B, others still quantized."""
    return lora_lib.apply_lora(base_q, lora, alpha=alpha, dropout=dropout, rng=rng, dequantize=maybe_dequantize)
