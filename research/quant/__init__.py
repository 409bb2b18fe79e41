"""Weight-only quantization (int8, int4, NF4 with double quantization) as a params-tree transform."""

from research.quant.codebook import NF4, NF4_MAX_HALF_GAP, normal_float_codebook
from research.quant.tensor import FORMATS, QTensor, dequantize, pack_nibbles, quantize, unpack_nibbles
from research.quant.transform import (
    dequantize_params,
    is_qtensor,
    param_bytes,
    quantize_params,
    quantize_params_from_config,
    quantized_model,
)

__all__ = [
    "FORMATS",
    "NF4",
    "NF4_MAX_HALF_GAP",
    "QTensor",
    "dequantize",
    "dequantize_params",
    "is_qtensor",
    "normal_float_codebook",
    "pack_nibbles",
    "param_bytes",
    "quantize",
    "quantize_params",
    "quantize_params_from_config",
    "quantized_model",
    "unpack_nibbles",
]
