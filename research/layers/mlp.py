"""Position-wise feed-forward network: GELU (tanh approximation, or exact erf), ReLU, SwiGLU or GeGLU."""

import flax.linen as nn
import jax

FFNS = ("gelu", "gelu_exact", "relu", "swiglu", "geglu")


class MLP(nn.Module):
    d_model: int
    hidden_dim: int
    kind: str = "gelu"
    use_bias: bool = False  # GPT-2 / BERT
    dtype: jax.typing.DTypeLike = None
    param_dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x):  # x: [batch, len, d_model]
        def dense(features, names, name):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, names[1:])
            return nn.Dense(
                features,
                use_bias=self.use_bias,
                kernel_init=init,
                bias_init=bias_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        # gelu is the tanh approximation (GPT-2's "gelu_new"); gelu_exact the erf form (BERT's "gelu").
        act = {"gelu": nn.gelu, "gelu_exact": lambda h: nn.gelu(h, approximate=False), "relu": nn.relu}
        if self.kind in act:
            h = act[self.kind](dense(self.hidden_dim, ("embed", "mlp"), "wi")(x))
        elif self.kind in ("swiglu", "geglu"):
            gate = dense(self.hidden_dim, ("embed", "mlp"), "wi_gate")(x)
            gate = nn.silu(gate) if self.kind == "swiglu" else nn.gelu(gate)
            h = gate * dense(self.hidden_dim, ("embed", "mlp"), "wi_up")(x)
        else:
            raise ValueError(f"model.ffn={self.kind!r}; choose one of {FFNS}")
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(self.d_model, ("mlp", "embed"), "wo")(h)
