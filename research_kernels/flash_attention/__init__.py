"""Flash attention as Pallas kernels: exact softmax attention without the [q_len, kv_len] logits in HBM.

    gpu.flash_attention   Triton-lowered kernels (NVIDIA/AMD GPUs)
    tpu.flash_attention   Mosaic-lowered kernels (TPUs)
    flash_attention       picks one by backend

Both take q [b, q_len, heads, hd], k/v [b, kv_len, kv_heads, hd] (MHA/GQA/MQA),
causal, segment ids ([b, len] or a (q_ids, kv_ids) pair, 0 = padding), block
sizes; both are differentiable (custom VJP with Pallas backward kernels) and run
on any backend with interpret=True (how the CPU tests exercise them). See
common.py for the conventions they share. This package imports only jax.
"""

import jax

from research_kernels.flash_attention import gpu, tpu
from research_kernels.flash_attention.common import MASK_VALUE

__all__ = ["MASK_VALUE", "flash_attention", "gpu", "tpu"]


def flash_attention(
    q, k, v, *, causal=False, segment_ids=None, block_q=128, block_kv=128, backend=None, interpret=False, **kwargs
):
    """The GPU or TPU kernel for `backend` (default: jax.default_backend()).

    Other backends (CPU) have no compiled Pallas kernel: there, interpret=True runs
    the GPU kernels in interpret mode and anything else is a ValueError.
    kwargs go to the backend's function (e.g. block_q_bwd, num_warps).
    """
    backend = backend or jax.default_backend()
    args = dict(causal=causal, segment_ids=segment_ids, block_q=block_q, block_kv=block_kv, **kwargs)
    if backend in ("gpu", "cuda", "rocm"):
        return gpu.flash_attention(q, k, v, interpret=interpret, **args)
    if backend == "tpu":
        return tpu.flash_attention(q, k, v, interpret=interpret, **args)
    if interpret:
        return gpu.flash_attention(q, k, v, interpret=True, **args)
    raise ValueError(
        f"no compiled Pallas flash-attention kernel for backend {backend!r} (supported: gpu, tpu); "
        "pass interpret=True to run the kernels in interpret mode"
    )
