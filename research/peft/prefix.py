"""Prefix tuning: every attention layer gets P learned key/value rows that every query attends to.

The prefixes are a tree mirroring the model's attention modules, e.g.
prefix["block_0"]["attn"] = {"key": [P, kv_heads, head_dim], "value": ...},
passed to `model.apply` as the variable collection "prefix". An `Attention`
module that finds "prefix/key" in its scope wraps its attention function with
research.attention.prefix's `with_prefix` (or `with_prefix_cached` when
decoding), so no model code is forked and the base parameters are untouched.

The prefix keys enter after RoPE: they have no position, and every query sees
them whatever its own position or packed segment (padding queries too, whose
outputs nobody reads). Attention variants must take an explicit `mask`: the
prefix columns break the `kv_idx <= q_idx` causal layout of fused kernels.
"""

import jax
import jax.numpy as jnp

from research.layers import Attention
from research.peft.common import find_modules, nest

COLLECTION = "prefix"


def init_prefix(model, init_inputs: dict, *, prefix_len: int, rng) -> dict:
    """Prefixes for every Attention module `model` calls (a shape-only trace finds them).

    Keys start N(0, 1), the scale of the projected keys of RMS-normalised inputs
    under fan-in init, and distinct per slot so the slots learn different things;
    values start at 0, so a fresh prefix only takes some attention mass (it
    shrinks the layer's output) instead of writing random vectors into the
    residual stream, which a pretrained model recovers from slowly.
    """
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 1:
        raise ValueError(f"peft.prefix_len={prefix_len!r} must be an int >= 1")
    out = {}
    for i, (path, (module, _)) in enumerate(sorted(find_modules(model, init_inputs, (Attention,)).items())):
        shape = (prefix_len, module.num_kv_heads, module.head_dim)
        out[path] = {"key": jax.random.normal(jax.random.fold_in(rng, i), shape), "value": jnp.zeros(shape)}
    return nest(out)


def prefix_variables(prefix) -> dict:
    """The extra variable collection for model.apply."""
    return {COLLECTION: prefix}
