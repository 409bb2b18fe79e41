"""What every family's converter shares: a checked state dict, and assembling our boxed parameter tree.

Import: a family maps checkpoint tensors to our parameter paths ("block_0/attn/query")
through `Tensors.take`, which checks each tensor's shape and names it when it is
missing or wrong; `assemble` then places the arrays into the model's own boxed
(nn.Partitioned) tree, so the result carries the same logical axis names as a
fresh `init` and shards with the same rules. Export is the inverse, over flat
`path -> array` dicts.
"""

import re
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


class Tensors:
    """A checkpoint's name -> array dict, consumed by a converter; every tensor must be used or ignored.

    prefixes: optional leading name parts the same architecture may carry or not
    (GPT-2's "transformer.", BERT's "bert."): they are stripped, so a converter
    names tensors one way.
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], *, prefixes: Iterable[str] = ()):
        self.source = tensors  # may be lazy (research.models.hf.io.LazyTensors): read on `take` only
        self.names = {}  # our name (prefix stripped) -> the checkpoint's
        for name in tensors:
            short = next((name[len(p) :] for p in prefixes if name.startswith(p)), name)
            self.names[short] = name
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32 numpy, which must have `shape` (the config's)."""
        if name not in self.names:
            raise ValueError(f"checkpoint has no tensor {name!r} (the config needs it)")
        x = self.source[self.names[name]]
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(x.shape)}, the config needs {tuple(shape)}")
        self.used.add(name)
        return np.asarray(x, np.float32)

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        """Raises naming tensors neither used nor matching an `ignore` regex (e.g. more layers than the config)."""
        patterns = [re.compile(p) for p in ignore]
        left = sorted(n for n in self.names if n not in self.used and not any(p.fullmatch(n) for p in patterns))
        if left:
            more = f" (and {len(left) - 8} more)" if len(left) > 8 else ""
            raise ValueError(f"checkpoint tensors the config has no place for: {left[:8]}{more}")


def assemble(abstract_boxed, flat: dict[str, np.ndarray], *, fresh=None) -> dict:
    """Our boxed parameter tree with the values of `flat` ("a/b/c" -> array).

    abstract_boxed: the model's `jax.eval_shape(init)` tree (nn.Partitioned leaves).
    fresh: an optional concrete boxed init whose leaves fill paths missing from
    `flat` (new task heads); without it, a missing path is an error.
    """
    target = traverse_util.flatten_dict(abstract_boxed, sep="/")
    extra = sorted(set(flat) - set(target))
    if extra:
        raise ValueError(f"converted parameters {extra} do not exist in the model (config mismatch)")
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/") if fresh is not None else {}
    out = {}
    for path, box in target.items():
        if path in flat:
            value, dtype = flat[path], _value(box).dtype
            if tuple(value.shape) != tuple(_value(box).shape):
                raise ValueError(f"parameter {path!r}: converted shape {value.shape}, model has {_value(box).shape}")
            value = jnp.asarray(value, dtype)
            out[path] = box.replace_boxed(value) if isinstance(box, nn.Partitioned) else value
        elif path in fresh_flat:
            out[path] = fresh_flat[path]
        else:
            raise ValueError(f"parameter {path!r} was not found in the checkpoint")
    return traverse_util.unflatten_dict(out, sep="/")


def _value(x):
    return x.value if isinstance(x, nn.Partitioned) else x


def flat_params(params) -> dict[str, np.ndarray]:
    """Boxed or plain parameter tree -> {"a/b/c": float32 numpy}."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    plain = jax.tree.map(lambda x: _value(x), params, is_leaf=is_box)
    flat = traverse_util.flatten_dict(plain, sep="/")
    return {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat.items()}


def require(config, field: str, allowed, family: str) -> None:
    """Export guard: our config field must hold a value the family's architecture can express."""
    value = getattr(config, field)
    if value not in allowed:
        raise ValueError(f"model.{field}={value!r} cannot be written as a {family} checkpoint; it needs {allowed}")
