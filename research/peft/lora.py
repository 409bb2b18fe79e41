"""LoRA as a transform on parameter trees: W = W0 + (alpha / r) * A @ B.

The base W0 is never copied nor trained: it is passed in (the training task
keeps it in `frozen`), and only the small A, B factors are parameters of the
run, so the optimizer state and the checkpoints hold nothing else.

Kernels as matrices. Flax kernels are used as `x @ W` ([fan_in, fan_out], the
transpose of the paper's d x k W), and ours are not all 2-d: attention's query,
key and value kernels are [d_model, heads, head_dim] and its output kernel is
[heads, head_dim, d_model]. A kernel's leading axes are its fan-in and the rest
its fan-out; LoRA sees the matrix [prod(fan-in axes), prod(fan-out axes)] and
keeps the factors unflattened:

    a: [*fan_in_axes, r]   b: [r, *fan_out_axes]   delta = tensordot(a, b, 1)  (W's shape)

How many leading axes are fan-in (`fan_in_ndim`): one, except for a kernel whose
last axis is the model width (logical name "embed": attention's `out`), where
every axis but the last is. For bare (unboxed) leaves, where the names are
unknown, a leaf named "out" is treated the same way. The split is stored in
the factors' own shapes (a.ndim - 1 fan-in axes), so applying needs no rule.

Init as in the paper: A random (normal, std 1/sqrt(fan_in)), B = 0, so a fresh
LoRA leaves the model's function unchanged.

Dropout: the paper drops the LoRA branch's input x per token. A transform on
weights cannot see x, so here dropout zeroes fan-in rows of A (the features of
x the branch reads) with one mask per step and micro-batch, shared by every
token: the same regulariser in expectation, with correlated noise.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.peft.common import count_params, flatten, logical_names, matching_paths, unboxed, unflatten

__all__ = ["apply_lora", "count_trainable", "fan_in_ndim", "init_lora", "lora_delta", "merge", "unmerge"]


def fan_in_ndim(path: str, leaf) -> int:
    """How many leading axes of this kernel are its fan-in (see the module docstring)."""
    ndim = len(np.shape(unboxed(leaf)))
    names = logical_names(leaf)
    if names is not None:
        return ndim - 1 if ndim > 2 and names[-1] == "embed" else 1
    return ndim - 1 if ndim > 2 and path.split("/")[-1] == "out" else 1


def init_lora(params, *, target: str, rank: int, rng, field: str = "peft.target") -> dict:
    """LoRA factors {"a", "b"} for every kernel of `params` whose path matches `target`.

    params: the base tree; only shapes are read (arrays, ShapeDtypeStructs or
    boxed leaves; give a quantized base's dequantized shapes). Returns a nested
    dict mirroring the base's paths, e.g. lora["block_0"]["attn"]["query"] =
    {"a": [d_model, r], "b": [r, heads, head_dim]}. Boxed leaves give boxed
    factors whose logical names follow the kernel's (the rank axis is
    unsharded), so the factors shard like their kernels.
    Raises ValueError naming `field` when the pattern matches no kernel, and
    naming the kernel when `rank` exceeds its matrix.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"peft.rank={rank!r} must be an int >= 1")
    flat = flatten(params)
    out = {}
    paths = matching_paths(params, target, field=field)
    for i, path in enumerate(paths):
        leaf = flat[path]
        shape = tuple(np.shape(unboxed(leaf)))
        dtype = getattr(unboxed(leaf), "dtype", jnp.float32)
        k = fan_in_ndim(path, leaf)
        fan_in, fan_out = int(np.prod(shape[:k])), int(np.prod(shape[k:]))
        if rank > min(fan_in, fan_out):
            raise ValueError(
                f"peft.rank={rank} is larger than the matrix of {path} (shape {shape}, seen as {fan_in} x {fan_out}); "
                f"use rank <= {min(fan_in, fan_out)}"
            )
        key = jax.random.fold_in(rng, i)
        a = jax.random.normal(key, (*shape[:k], rank), jnp.float32) * fan_in**-0.5  # [*fan_in, r]
        a = a.astype(dtype)
        b = jnp.zeros((rank, *shape[k:]), dtype)  # [r, *fan_out]
        names = logical_names(leaf)
        if names is not None:  # same box type (logical or mesh axis names), the rank axis unsharded
            a = leaf.replace(value=a, names=(*names[:k], None))
            b = leaf.replace(value=b, names=(None, *names[k:]))
        out[path] = {"a": a, "b": b}
    return unflatten(out)


def _factors(lora) -> dict[str, tuple]:
    """{kernel path: (a, b)} from a LoRA tree."""
    flat = flatten(lora)
    paths = sorted({p.rsplit("/", 1)[0] for p in flat})
    return {p: (unboxed(flat[f"{p}/a"]), unboxed(flat[f"{p}/b"])) for p in paths}


def lora_delta(a, b, *, alpha: float):
    """(alpha / r) * a @ b in W's shape, computed in float32."""
    rank = a.shape[-1]
    delta = jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)  # [*fan_in, *fan_out]
    return delta * (alpha / rank)


def apply_lora(
    base,
    lora,
    *,
    alpha: float,
    dropout: float = 0.0,
    rng=None,
    dequantize: Callable | None = None,
):
    """The effective parameters: base with W0 + (alpha / r) * A @ B at every LoRA path.

    Differentiable in `lora` (and in `base`, though the training task never asks).
    dropout > 0 with an rng drops fan-in rows of A (see the module docstring).
    dequantize: leaf -> array, applied to the targeted W0 leaves first (QLoRA);
    the result takes W0's (dequantized) dtype. Other leaves pass through untouched.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"peft.dropout={dropout} must be in [0, 1)")
    flat = flatten(base)
    for i, (path, (a, b)) in enumerate(_factors(lora).items()):
        if path not in flat:
            raise ValueError(f"the LoRA parameters hold {path}, which the base parameters lack")
        w0 = flat[path] if dequantize is None else dequantize(flat[path])
        if dropout > 0.0 and rng is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - dropout, a.shape[:-1])  # [*fan_in]
            a = a * (keep[..., None] / (1.0 - dropout)).astype(a.dtype)
        if w0.shape != a.shape[:-1] + b.shape[1:]:
            raise ValueError(f"LoRA factors of {path} give shape {a.shape[:-1] + b.shape[1:]}, W0 has {w0.shape}")
        flat[path] = (w0.astype(jnp.float32) + lora_delta(a, b, alpha=alpha)).astype(w0.dtype)
    return unflatten(flat)


def merge(base, lora, *, alpha: float):
    """W0 + delta, for inference at the base model's cost (no dropout)."""
    return apply_lora(base, lora, alpha=alpha)


def unmerge(merged, lora, *, alpha: float):
    """W0 back from merged weights: W - delta (exact up to float rounding)."""
    flat = flatten(merged)
    for path, (a, b) in _factors(lora).items():
        w = flat[path]
        flat[path] = (w.astype(jnp.float32) - lora_delta(a, b, alpha=alpha)).astype(w.dtype)
    return unflatten(flat)


def count_trainable(tree) -> int:
    """Scalars in a (LoRA, prefix, adapter or full) parameter tree."""
    return count_params(tree)
