"""The MLP's matmul with a hand-written backward (research/layers/mlp.py) against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.mlp import FFNS, MLP, _dot_general, _matmul


@pytest.mark.parametrize("x_shape", [(5, 8), (2, 5, 8)])
def test_matmul_gradient_equals_autodiff(x_shape):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (8, 3))
    g = jax.random.normal(kg, x_shape[:-1] + (3,))
    ours = jax.grad(lambda x, w: jnp.vdot(_matmul(x, w), g), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.vdot(x @ w, g), argnums=(0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dot_general_falls_back_for_other_contractions():
    x, w = jnp.ones((2, 3, 4)), jnp.ones((3, 5))
    dims = (((1,), (0,)), ((), ()))  # contracts x's middle axis: not nn.Dense's layout
    np.testing.assert_allclose(_dot_general(x, w, dims), jax.lax.dot_general(x, w, dims))


@pytest.mark.parametrize("kind", FFNS)
def test_mlp_equals_plain_dense_mlp(kind):
    """Every FFN kind: same outputs and parameter gradients as the MLP written with jnp.matmul."""
    mlp = MLP(d_model=8, hidden_dim=16, kind=kind, use_bias=True)
    x = jax.random.normal(jax.random.key(1), (2, 3, 8))
    params = mlp.init(jax.random.key(2), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases

    def reference(p, x):
        act = {
            "gelu": jax.nn.gelu,
            "gelu_exact": lambda h: jax.nn.gelu(h, approximate=False),
            "relu": jax.nn.relu,
            "swiglu": jax.nn.silu,
            "geglu": jax.nn.gelu,
        }[kind]
        dense = lambda name, h: h @ p[name]["kernel"].unbox() + p[name]["bias"].unbox()  # noqa: E731
        if kind in ("swiglu", "geglu"):
            h = act(dense("wi_gate", x)) * dense("wi_up", x)
        else:
            h = act(dense("wi", x))
        return dense("wo", h)

    def loss(fn, p):
        return jnp.sum(jnp.sin(fn(p, x)))

    ours = jax.value_and_grad(lambda p: loss(lambda p, x: mlp.apply({"params": p}, x), p))(params)
    ref = jax.value_and_grad(lambda p: loss(reference, p))(params)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
