"""Quantization as a transform over parameter trees, and models that run on the result.

`quantize_params` replaces the matched float leaves of a params tree by QTensors
(path patterns -> rule, like PEFT and sharding). `quantized_model(model)` is the
same model class wrapped by `flax.linen.map_variables`: its "params" may hold
QTensors, which are dequantized inside the model's (jitted) forward pass. Only
the packed codes and scales are stored and passed around; no model code is
forked, so every model of the codebase, the decode loop and the train step run
on quantized weights unchanged.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import ml_collections

from research.quant.tensor import FORMATS, QTensor, dequantize, quantize

# Which axes of a weight a matmul contracts (its "input" side), by parameter path.
# The scale groups run along these. First match wins; anything else contracts axis 0
# (Dense kernels [in, out], attention query/key/value [d_model, heads, head_dim]).
CONTRACTION_RULES = (
    (r"(^|/)embedding$", (-1,)),  # nn.Embed [vocab, d]: rows are looked up, tied logits contract d
    (r"(^|/)out$", (0, 1)),  # attention output [heads, head_dim, d_model]
    (r"(^|/)moe/(wi|wi_gate|wi_up|wo)$", (1,)),  # experts [experts, in, out]
)


BIAS = re.compile(r"(^|/|_)bias$")  # 'bias', 'key_bias', 'mlm_bias': added, never multiplied


def path_str(path) -> str:
    """A key path as 'block_0/attn/query'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def contraction_axes(path: str, ndim: int, rules=CONTRACTION_RULES) -> tuple:
    for pattern, axes in rules:
        if re.search(pattern, path):
            return tuple(a % ndim for a in axes)
    return (0,)


def is_qtensor(x) -> bool:
    return isinstance(x, QTensor)


def quantize_params(
    params,
    format: str,
    *,
    group_size: int = -1,
    double_quant: bool = False,
    targets: str = ".*",
    exclude: str = "",
    rules=CONTRACTION_RULES,
):
    """Replaces every weight of rank >= 2 whose path matches `targets` (and not `exclude`,
    both regexes searched in 'block_0/attn/query') by its QTensor; other leaves are kept, and so
    are biases (attention's are [heads, head_dim]: rank 2, but no matmul contracts them).

    Raises ValueError naming the parameter if the group size does not divide it,
    and if `targets` matches no weight at all (a typo would otherwise quantize nothing).
    """
    if format not in FORMATS:
        raise ValueError(f"quant.format={format!r}; choose one of {FORMATS}")
    matched = []

    def one(path, x):
        name = path_str(path)
        if x.ndim < 2 or BIAS.search(name) or not re.search(targets, name) or (exclude and re.search(exclude, name)):
            return x
        matched.append(name)
        axes = contraction_axes(name, x.ndim, rules)
        return quantize(
            x, format, group_size=group_size, contract_axes=axes, double_quant=double_quant, name=f"parameter {name}"
        )

    out = jax.tree_util.tree_map_with_path(one, params)
    if not matched:
        raise ValueError(f"quant.targets={targets!r} (exclude={exclude!r}) matches no weight of rank >= 2")
    return out


def quantize_params_from_config(params, quant: ml_collections.ConfigDict):
    """quantize_params with the options of a `config.quant` section."""
    return quantize_params(
        params,
        quant.format,
        group_size=quant.group_size,
        double_quant=quant.double_quant,
        targets=quant.targets,
        exclude=quant.exclude,
    )


def dequantize_params(params):
    """QTensor leaves -> their float weights; everything else unchanged."""
    return jax.tree.map(lambda x: dequantize(x) if is_qtensor(x) else x, params, is_leaf=is_qtensor)


def param_bytes(params) -> int:
    """Bytes the tree stores (packed codes and scales for QTensors)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))


def quantized_model(model: nn.Module) -> nn.Module:
    """The same model (same fields, same parameter paths) accepting QTensors in "params".

    map_variables dequantizes the params collection when the model is applied, so
    `quantized_model(m).apply({"params": q}, x)` computes exactly
    `m.apply({"params": dequantize_params(q)}, x)`: the same function, with the
    float weights existing only as temporaries inside the compiled computation.
    Other collections (the KV cache) pass through untouched.

    Memory: what is stored and passed around is packed. Inside one compiled call
    XLA may keep float copies alive: in research.decode's generation loop it
    hoists the (loop-invariant) decoding out of the while loop, so generation
    holds the float weights while it runs. Keeping them packed down to the matmul
    takes a fused kernel (research_kernels/quant_matmul.py).
    """
    cls = nn.map_variables(type(model), "params", trans_in_fn=dequantize_params, mutable=True)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init}
    fields.pop("parent", None)
    fields.pop("name", None)
    return cls(**fields)
