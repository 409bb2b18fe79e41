"""Name -> attention function registry (see research.attention for the signature).

A variant declares the options it reads (`window`, `block_size`, ...). Models
carry every option from `config.model.attention_options`; `get_attention`
binds only the ones the chosen variant declares, so adding a variant never
changes the modules or the other variants.
"""

import functools
from collections.abc import Callable, Iterable, Mapping

AttentionFn = Callable[..., "jax.Array"]  # noqa: F821 (documented signature, not enforced)

_REGISTRY: dict[str, tuple[AttentionFn, tuple[str, ...], Callable | str | None]] = {}

# `decode_mask` value of variants that cached decoding can't reproduce.
NO_CACHED_DECODING = "no cached decoding"


def register_attention(name: str, options: Iterable[str] = (), decode_mask: Callable | str | None = None):
    """Decorator: `@register_attention("sliding", options=("window",))` makes `fn` selectable by name.

    `options` are keyword arguments of `fn` filled from the model's attention options.
    `decode_mask` says how KV-cache decoding (dense attention over the cached
    keys) computes this variant: None, it is exact as it is (dense, blockwise,
    flash); a function `(q_pos, kv_pos, **options) -> bool` of token positions,
    the variant's sparsity pattern, added to the causal and segment masks; or
    NO_CACHED_DECODING for approximations a dense cache can't reproduce.
    """

    def wrap(fn: AttentionFn) -> AttentionFn:
        if name in _REGISTRY and _REGISTRY[name][0] is not fn:
            raise ValueError(f"attention {name!r} is already registered")
        _REGISTRY[name] = (fn, tuple(options), decode_mask)
        return fn

    return wrap


def list_attention() -> list[str]:
    return sorted(_REGISTRY)


def attention_options(name: str) -> tuple[str, ...]:
    """The option names variant `name` reads."""
    return _lookup(name)[1]


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"model.attention={name!r} is not a registered attention; choose one of {list_attention()}"
        ) from None


def get_attention(name: str, options: Mapping | None = None) -> AttentionFn:
    """The function registered as `name`, with the options it declares bound from `options`.

    Options other variants read are ignored; a declared option missing from
    `options` keeps the function's own default.
    """
    fn, declared, _ = _lookup(name)
    bound = {k: v for k, v in dict(options or {}).items() if k in declared}
    return functools.partial(fn, **bound) if bound else fn


def get_decode_mask(name: str, options: Mapping | None = None):
    """`(q_pos, kv_pos) -> bool` for cached decoding with variant `name`, or None when no extra mask is needed.

    Raises ValueError for variants cached decoding can't reproduce.
    """
    _, declared, decode_mask = _lookup(name)
    if decode_mask == NO_CACHED_DECODING:
        raise ValueError(
            f"model.attention={name!r} has no KV-cache decoding (a dense cache would compute another function); "
            f"variants that do: {[n for n in list_attention() if _REGISTRY[n][2] != NO_CACHED_DECODING]}"
        )
    if decode_mask is None:
        return None
    bound = {k: v for k, v in dict(options or {}).items() if k in declared}
    return functools.partial(decode_mask, **bound)
