"""Flax Linen building blocks. Every parameter and main activation carries logical axis names."""

from research.layers.attention import Attention
from research.layers.mlp import MLP
from research.layers.norms import make_norm
from research.layers.position import apply_rope, sinusoidal_embedding

__all__ = ["Attention", "MLP", "apply_rope", "make_norm", "sinusoidal_embedding"]
