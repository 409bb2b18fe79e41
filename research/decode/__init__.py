"""Autoregressive decoding with a KV cache, and samplers."""

from research.decode.generate import generate, init_cache, pad_prompts
from research.decode.sampling import sample_logits, top_k_filter, top_p_filter

__all__ = ["generate", "init_cache", "pad_prompts", "sample_logits", "top_k_filter", "top_p_filter"]
