"""Device mesh, logical-axis rules, and the shardings they give.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism that also
shards parameters and optimizer state), `tensor` (Megatron-style model
parallelism over heads and the MLP hidden dimension), `expert` (Mixture of
Experts: expert weights [experts, ...] are split over it, and everywhere else it
is one more data axis, so the batch is sharded over data x fsdp x expert and an
MoE layer's dispatch turns batch-sharded tokens into expert-sharded buffers with
an all-to-all).
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor")  # batch axes first: a process's rows on its own devices
BATCH_AXES = ("data", "fsdp", "expert")

# logical name -> mesh axis (or axes, or None = replicated).
LOGICAL_RULES = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("expert", "expert"),
    ("activation_expert", "expert"),
    ("activation_expert_group", ("data", "fsdp")),  # token groups, once experts hold the expert axis
)


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
    """Resolves the one -1 axis, checking the product equals the device count."""
    sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}  # configs from before an axis existed: 1
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {sizes} does not fit {num_devices} devices: the fixed axes' product {fixed} must divide it"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices, but {num_devices} are available")
    return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    if devices[0].platform == "cpu":
        # Process-major order, so each process's rows of the batch sit on its own devices.
        device_array = np.asarray(devices).reshape(shape)
    else:  # topology-aware placement on TPU/GPU slices
        device_array = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(device_array, MESH_AXES)


def _divisible_spec(spec: P, shape, mesh: Mesh) -> P:
    """Drops mesh axes that don't divide their dimension (e.g. 1 kv head over tensor=2).

    Such a dimension is replicated instead: correct, and what one would do by hand.
    """
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[n] for n in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def strip_boxes(tree):
    """nn.Partitioned boxes -> their values, without nn.unbox's sharding constraint
    (which needs concrete arrays and would fail on eval_shape's abstract ones)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_RULES):
    """Tree of NamedSharding for a tree whose leaves may be nn.Partitioned boxes (or abstract arrays)."""
    specs = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = jax.tree.map(lambda x: x.shape, strip_boxes(boxed_tree))
    return jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, _divisible_spec(spec, shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, len] arrays: rows split over every data-parallel axis."""
    return NamedSharding(mesh, P(BATCH_AXES, None))
