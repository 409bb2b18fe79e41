"""Autoregressive decoding with a KV cache: the sampler, `generate` on top of it, token processors."""

from research.decode.generate import generate
from research.decode.processors import ForbidTokens, ForceAfter, StepContext, TokenProcessor
from research.decode.sampler import DecodeState, Samples, SamplingConfig, extend, init_cache, left_pad, sample
from research.decode.sampling import top_k_filter, top_p_filter
from research.decode.seq2seq import generate_seq2seq

__all__ = [
    "DecodeState",
    "ForbidTokens",
    "ForceAfter",
    "Samples",
    "SamplingConfig",
    "StepContext",
    "TokenProcessor",
    "extend",
    "generate",
    "generate_seq2seq",
    "init_cache",
    "left_pad",
    "sample",
    "top_k_filter",
    "top_p_filter",
]
