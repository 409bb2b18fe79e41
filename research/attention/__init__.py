"""Attention as pure functions, looked up by name.

Every implementation has one signature::

    attend(q, k, v, *, causal=False, segment_ids=None, mask=None) -> out

    q:    [batch, q_len, heads, head_dim]
    k, v: [batch, kv_len, kv_heads, head_dim]   (kv_heads divides heads: MHA, GQA, MQA)
    segment_ids: [batch, len] (shared by q and kv) or a (q_ids, kv_ids) pair;
                 tokens attend only within their segment, 0 marks padding.
    mask: optional boolean, broadcastable to [batch, heads, q_len, kv_len];
          True = may attend.
    out:  [batch, q_len, heads, head_dim], q's dtype.

*What* is computed (the variant) is separate from *how* (XLA, Pallas GPU,
Pallas TPU, interpret): a registry name is one (variant, implementation) pair
and modules only ever hold the name.
"""

from research.attention.blockwise import blockwise_attention  # registers "blockwise"
from research.attention.dense import cached_attention, dense_attention, make_attention_mask
from research.attention.flash import flash_attention  # registers "flash"
from research.attention.lowrank import linformer_attention, performer_attention  # registers both
from research.attention.registry import (
    attention_options,
    get_attention,
    get_decode_mask,
    list_attention,
    register_attention,
)
from research.attention.sparse import (  # registers "sliding", "block_sparse", "strided"
    block_sparse_attention,
    sliding_attention,
    strided_attention,
)

__all__ = [
    "attention_options",
    "block_sparse_attention",
    "blockwise_attention",
    "cached_attention",
    "dense_attention",
    "flash_attention",
    "get_attention",
    "get_decode_mask",
    "linformer_attention",
    "list_attention",
    "make_attention_mask",
    "performer_attention",
    "register_attention",
    "sliding_attention",
    "strided_attention",
]
