"""Position-wise feed-forward network: GELU (tanh approximation, or exact erf), ReLU, SwiGLU or GeGLU."""

import flax.linen as nn
import jax
import jax.numpy as jnp

FFNS = ("gelu", "gelu_exact", "relu", "swiglu", "geglu")


@jax.custom_vjp
def _matmul(x, kernel):
    """x [..., in] @ kernel [in, out], with the backward written as two plain matmuls.

    The same maths as autodiff's, but XLA:CPU compiles autodiff's kernel gradient as a dot
    that wants the activation gradient transposed, and then fuses the activation's
    derivative (GELU's) into that transposing copy, which runs ~10x slower than the same
    arithmetic in place; this form keeps both gradient matmuls in their fast layout.
    The step of research.bench.train's default shape took 0.88x the time.
    """
    return jnp.matmul(x, kernel)


def _matmul_fwd(x, kernel):
    return _matmul(x, kernel), (x, kernel)


def _matmul_bwd(res, g):
    x, kernel = res
    dx = jnp.matmul(g, kernel.T)
    dk = jnp.einsum("ti,to->io", x.reshape(-1, kernel.shape[0]), g.reshape(-1, kernel.shape[1]))
    return dx, dk


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's contraction (last axis of lhs with the first of a 2-d rhs) through `_matmul`."""
    (lc, rc), (lb, rb) = dimension_numbers
    if rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb:
        if precision is None and preferred_element_type is None:
            return _matmul(lhs, rhs)
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
    )


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
                dot_general=_dot_general,
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
