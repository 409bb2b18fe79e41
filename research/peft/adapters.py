"""Adapters (Houlsby et al.): a bottleneck after every attention and MLP layer, h + up(gelu(down(h))).

The adapter weights are a tree mirroring the model's Attention and MLP modules,
e.g. adapters["block_0"]["mlp"] = {"down": [d, m], "down_bias": [m], "up": [m, d],
"up_bias": [d]}, passed to `model.apply` as the variable collection "adapters".
`interceptor` (under `flax.linen.intercept_methods`) adds the bottleneck to the
output of every such module that finds its adapter weights in scope: the model
code is not forked, and the same tree works when decoding with a KV cache.

`up` starts at zero, so fresh adapters leave the model's function unchanged.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.peft.common import find_modules, nest

COLLECTION = "adapters"


def _adapted_classes() -> tuple:
    from research.layers import MLP, Attention  # here: research.layers imports research.peft.prefix

    return (Attention, MLP)


def init_adapters(model, init_inputs: dict, *, dim: int, rng) -> dict:
    """Adapter weights for every Attention and MLP module `model` calls, sized from its output width."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"peft.adapter_dim={dim!r} must be an int >= 1")
    out = {}
    for i, (path, (_, shape)) in enumerate(sorted(find_modules(model, init_inputs, _adapted_classes()).items())):
        width = shape[-1]
        down = jax.random.normal(jax.random.fold_in(rng, i), (width, dim)) * width**-0.5
        out[path] = {
            "down": down,
            "down_bias": jnp.zeros((dim,)),
            "up": jnp.zeros((dim, width)),
            "up_bias": jnp.zeros((width,)),
        }
    return nest(out)


def bottleneck(h, w):
    """h + up(gelu(down(h))): h [..., d] in its dtype; the adapter computes in h's dtype too."""
    z = nn.gelu(h @ w["down"].astype(h.dtype) + w["down_bias"].astype(h.dtype))  # [..., m]
    return h + z @ w["up"].astype(h.dtype) + w["up_bias"].astype(h.dtype)


def interceptor(next_fun, args, kwargs, context):
    """Adds the module's adapter to the output of Attention / MLP calls whose scope holds one."""
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, _adapted_classes()):
        return out
    if not module.has_variable(COLLECTION, "down"):
        return out
    weights = {name: module.get_variable(COLLECTION, name) for name in ("down", "down_bias", "up", "up_bias")}
    return bottleneck(out, weights)


def adapter_variables(adapters) -> dict:
    """The extra variable collection for model.apply (run it under `nn.intercept_methods(interceptor)`)."""
    return {COLLECTION: adapters}
