"""Autoregressive decoding with a KV cache, and samplers."""

from research.decode.generate import generate, init_cache, pad_prompts
from research.decode.sampling import sample_logits, top_k_filter, top_p_filter
from research.decode.seq2seq import generate_seq2seq

__all__ = [
    "generate",
    "generate_seq2seq",
    "init_cache",
    "pad_prompts",
    "sample_logits",
    "top_k_filter",
    "top_p_filter",
]
