"""Flash attention by name: the Pallas kernels of research_kernels/flash_attention, chosen by backend.

    GPU: Triton-lowered kernel.  TPU: Mosaic kernel.
    CPU: the pure-JAX "blockwise" variant (same maths, O(n) memory) — unless
         interpret=True, which runs the GPU kernel in Pallas interpret mode
         (slow; for tests that must exercise the real kernel code).

The kernels do not pad: block_q / block_kv must divide the sequence length
(blocks longer than the sequence shrink to it). Padding queries (segment id 0)
get output 0 where dense gives a uniform average; losses mask them anyway.

Under a mesh (jax.set_mesh, as the training loop does) the kernel runs inside
shard_map over the batch and head axes the logical rules give activations:
XLA cannot partition a Pallas custom call itself and would otherwise gather
every device's q/k/v and repeat the whole attention on each.
"""

import math

import jax
from jax.sharding import PartitionSpec as P

from research.attention.registry import get_attention, register_attention
from research_kernels.flash_attention import gpu, tpu

MIN_KERNEL_LEN = 16  # the Triton kernel's smallest tile (research_kernels/flash_attention/gpu.py)


@register_attention("flash", options=("block_q", "block_kv", "interpret"))
def flash_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, block_q=128, block_kv=128, interpret=False):
    """Exact attention, tiled; the research.attention signature plus the tile sizes."""
    if mask is not None:
        raise ValueError(
            "flash attention supports causal and segment_ids masking only, not an arbitrary dense `mask`; "
            "use model.attention='dense' for that"
        )
    backend = jax.default_backend()
    if min(q.shape[1], k.shape[1]) < MIN_KERNEL_LEN:
        # Shorter than the smallest kernel tile: the models' init passes (8 tokens) and tiny inputs
        # take the dense path, the same function; without this a flash model could not be initialised.
        return get_attention("dense")(q, k, v, causal=causal, segment_ids=segment_ids)
    if interpret or backend in ("gpu", "tpu"):
        kernel = gpu.flash_attention if interpret or backend == "gpu" else tpu.flash_attention
        kwargs = dict(causal=causal, block_q=block_q, block_kv=block_kv)
        if interpret:
            kwargs["interpret"] = True
        return _sharded(kernel, kwargs, q, k, v, segment_ids)
    # CPU: no compiled Pallas; the blockwise variant computes the same function in pure JAX.
    return get_attention("blockwise", {"block_size": block_kv})(q, k, v, causal=causal, segment_ids=segment_ids)


def _sharded(kernel, kwargs, q, k, v, segment_ids):
    """kernel(q, k, v, segment_ids=..., **kwargs), per device under the current mesh when there is one."""
    ids = () if segment_ids is None else tuple(segment_ids) if isinstance(segment_ids, tuple | list) else (segment_ids,)

    def local(q, k, v, *ids):
        seg = None if not ids else ids[0] if len(ids) == 1 else tuple(ids)
        return kernel(q, k, v, segment_ids=seg, **kwargs)

    specs = _mesh_specs(q.shape[0], q.shape[2], k.shape[2])
    if specs is None:
        return local(q, k, v, *ids)
    mesh, spec, id_spec = specs
    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, spec) + (id_spec,) * len(ids), out_specs=spec, check_vma=False
    )(q, k, v, *ids)


def _mesh_specs(batch, heads, kv_heads):
    """(mesh, [b, len, heads, hd] spec, [b, len] spec) splitting batch and heads as activations are, or None.

    The axes come from flax's logical rules in scope ("activation_batch", "activation_heads"); an axis that
    doesn't divide its dimension is left unsplit.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return None  # (explicit-sharding meshes carry their own specs; the training loop's mesh is Auto)
    import flax.linen as nn  # only needed under a mesh; flax's rules are what the model's layers use

    batch_axes, head_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))

    def size(axes):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        return math.prod(mesh.shape[a] for a in names)

    if batch % size(batch_axes):
        batch_axes = None
    if heads % size(head_axes) or kv_heads % size(head_axes):
        head_axes = None
    if size(batch_axes) * size(head_axes) == 1:
        return None
    return mesh, P(batch_axes, None, head_axes, None), P(batch_axes, None)
