"""Flax Linen building blocks. Every parameter and main activation carries logical axis names."""

from research.layers.attention import Attention
from research.layers.mlp import MLP
from research.layers.norms import make_norm
from research.layers.position import apply_rope, sinusoidal_embedding
from research.layers.relative_position import RelativePositionBias, relative_position_bucket

__all__ = [
    "MLP",
    "Attention",
    "RelativePositionBias",
    "apply_rope",
    "make_norm",
    "relative_position_bucket",
    "sinusoidal_embedding",
]
