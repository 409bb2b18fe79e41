"""LayerNorm | RMSNorm with logically partitioned scales."""

import flax.linen as nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, *, eps: float, dtype, param_dtype, name: str) -> nn.Module:
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)
    if kind == "layernorm":
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("norm",))
        return nn.LayerNorm(
            epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, bias_init=bias_init, name=name
        )
    raise ValueError(f"model.norm={kind!r}; choose one of {NORMS}")
