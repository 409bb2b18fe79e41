"""Flash attention by name: the Pallas kernels of kernels/flash_attention, chosen by backend.

    GPU: Triton-lowered kernel.  TPU: Mosaic kernel.
    CPU: the pure-JAX "blockwise" variant (same maths, O(n) memory) — unless
         interpret=True, which runs the GPU kernel in Pallas interpret mode
         (slow; for tests that must exercise the real kernel code).

The kernels do not pad: block_q / block_kv must divide the sequence length
(blocks longer than the sequence shrink to it). Padding queries (segment id 0)
get output 0 where dense gives a uniform average; losses mask them anyway.
"""

import jax

from kernels.flash_attention import gpu, tpu
from research.attention.registry import get_attention, register_attention


@register_attention("flash", options=("block_q", "block_kv", "interpret"))
def flash_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, block_q=128, block_kv=128, interpret=False):
    """Exact attention, tiled; the research.attention signature plus the tile sizes."""
    if mask is not None:
        raise ValueError(
            "flash attention supports causal and segment_ids masking only, not an arbitrary dense `mask`; "
            "use model.attention='dense' for that"
        )
    kwargs = dict(causal=causal, segment_ids=segment_ids, block_q=block_q, block_kv=block_kv)
    if interpret:
        return gpu.flash_attention(q, k, v, interpret=True, **kwargs)
    backend = jax.default_backend()
    if backend == "gpu":
        return gpu.flash_attention(q, k, v, **kwargs)
    if backend == "tpu":
        return tpu.flash_attention(q, k, v, **kwargs)
    # CPU: no compiled Pallas; the blockwise variant computes the same function in pure JAX.
    return get_attention("blockwise", {"block_size": block_kv})(q, k, v, causal=causal, segment_ids=segment_ids)
