"""Position-wise feed-forward network: GELU or SwiGLU."""

import flax.linen as nn
import jax

FFNS = ("gelu", "swiglu")


class MLP(nn.Module):
    d_model: int
    hidden_dim: int
    kind: str = "gelu"
    dtype: jax.typing.DTypeLike = None
    param_dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x):  # x: [batch, len, d_model]
        def dense(features, names, name):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
            return nn.Dense(
                features, use_bias=False, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype, name=name
            )

        if self.kind == "gelu":
            h = nn.gelu(dense(self.hidden_dim, ("embed", "mlp"), "wi")(x))
        elif self.kind == "swiglu":
            gate = dense(self.hidden_dim, ("embed", "mlp"), "wi_gate")(x)
            h = nn.silu(gate) * dense(self.hidden_dim, ("embed", "mlp"), "wi_up")(x)
        else:
            raise ValueError(f"model.ffn={self.kind!r}; choose one of {FFNS}")
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(self.d_model, ("mlp", "embed"), "wo")(h)
