"""Name -> attention function registry (see research.attention for the signature)."""

from collections.abc import Callable

AttentionFn = Callable[..., "jax.Array"]  # noqa: F821 (documented signature, not enforced)

_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str):
    """Decorator: `@register_attention("dense")` makes `fn` selectable by name."""

    def wrap(fn: AttentionFn) -> AttentionFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"attention {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_attention() -> list[str]:
    return sorted(_REGISTRY)


def get_attention(name: str) -> AttentionFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"model.attention={name!r} is not a registered attention; choose one of {list_attention()}"
        ) from None
