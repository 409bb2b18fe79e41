"""What every PEFT method shares: parameter paths, pattern matching, counting.

A path is the '/'-joined chain of dict keys down to a leaf of a parameter tree,
e.g. "block_0/attn/query" or "block_1/mlp/wi/kernel". Methods select the
parameters they act on with a regular expression searched (`re.search`) in
these paths, so one rule works for every model whose layers carry the same
names, and a typo fails loudly instead of silently training nothing.

Leaves may be arrays, jax.ShapeDtypeStructs (shape-only trees under
jax.eval_shape) or flax `nn.Partitioned` boxes carrying logical axis names.
"""

import re

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def flatten(tree) -> dict[str, object]:
    """{path: leaf} for a nested dict of parameters (boxes stay whole: they are leaves here)."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: dict[str, object]) -> dict:
    """The nested dict `flatten` came from."""
    return traverse_util.unflatten_dict(flat, sep="/")


def unboxed(leaf):
    """The array (or ShapeDtypeStruct) inside an `nn.Partitioned` box, or the leaf itself."""
    return leaf.value if isinstance(leaf, nn.Partitioned) else leaf


def logical_names(leaf) -> tuple | None:
    """The logical axis names of a boxed leaf, or None for a bare one."""
    return tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else None


def matching_paths(params, pattern: str, *, field: str, min_ndim: int = 2) -> list[str]:
    """Sorted paths of leaves with >= min_ndim axes whose path matches `pattern` (re.search).

    Raises ValueError naming `field` and the pattern, with example paths, when
    the pattern is not a valid regex or matches nothing.
    """
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{field}={pattern!r} is not a valid regular expression: {e}") from None
    flat = flatten(params)
    eligible = [p for p, leaf in flat.items() if len(np.shape(unboxed(leaf))) >= min_ndim]
    paths = sorted(p for p in eligible if regex.search(p))
    if not paths:
        examples = ", ".join(sorted(eligible)[:12])
        raise ValueError(
            f"{field}={pattern!r} matches no parameter with >= {min_ndim} axes; the model's parameter paths "
            f"include: {examples}"
        )
    return paths


def find_modules(model: nn.Module, init_inputs: dict, classes: tuple) -> dict[tuple, tuple]:
    """{module path: (module, output shape)} for every call of a module of `classes` in model.init.

    Shape-only (jax.eval_shape): costs one trace, no FLOPs. This is how prefix
    tuning and adapters find the attention and MLP layers of any of our models
    without knowing how the model nests them.
    """
    found = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, classes):
            found[tuple(context.module.path)] = (context.module, tuple(out.shape))
        return out

    def init():
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), **init_inputs)

    jax.eval_shape(init)
    if not found:
        names = ", ".join(c.__name__ for c in classes)
        raise ValueError(f"{type(model).__name__} calls no {names} module: this PEFT method has nothing to attach to")
    return found


def nest(flat: dict[tuple, object]) -> dict:
    """{("block_0", "attn"): x} -> {"block_0": {"attn": x}}."""
    return traverse_util.unflatten_dict(flat)


def count_params(tree) -> int:
    """Number of scalars in a tree (boxed or not); 0 for None."""
    if tree is None:
        return 0
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return sum(int(np.prod(np.shape(unboxed(leaf)))) for leaf in leaves)
