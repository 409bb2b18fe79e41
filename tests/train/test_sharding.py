"""The same train step on 1 device and on 8 fake CPU devices (fsdp=4 x tensor=2)."""

import jax
import numpy as np
import pytest

from research.config import default_config
from research.train.sharding import mesh_shape
from tests.train.harness import PADS, assert_same_update, linear_first_update, one_step, ragged_batch


@pytest.fixture(scope="module")
def setup():
    c = default_config()
    c.model.update(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn="swiglu", norm="rmsnorm")
    c.data.seq_len = 32
    linear_first_update(c.optim)
    batch = ragged_batch()
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c, batch, one_step(c, jax.devices()[:1], batch)


@pytest.mark.parametrize("mesh,accum", [((1, 4, 2), 1), ((2, 2, 2), 2)])
def test_sharded_step_equals_single_device(setup, mesh, accum):
    c, batch, (m1, p1, p0, _, _) = setup
    c = c.copy_and_resolve_references()
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    c.train.grad_accum_steps = accum
    m8, p8, _, spec, _ = one_step(c, jax.devices()[:8], batch)
    assert tuple(spec)[:2] == ("fsdp", "tensor")  # really sharded
    assert m1["target_tokens"] == m8["target_tokens"] == sum(32 - pad - 2 for pad in PADS)
    # float32 with a different reduction order: loss and grad norm agree to ~1e-6 relative.
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    assert_same_update(p1, p8, p0)


def test_mesh_shape_errors():
    assert mesh_shape(dict(data=-1, fsdp=4, tensor=2), 8) == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}
    with pytest.raises(ValueError, match="8 are available"):
        mesh_shape(dict(data=3, fsdp=1, tensor=1), 8)
    with pytest.raises(ValueError, match="must divide"):
        mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
