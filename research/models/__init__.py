"""Models assembled from research.layers."""

from research.models.decoder import Block, DecoderLM, ModelConfig, init_params

__all__ = ["Block", "DecoderLM", "ModelConfig", "init_params"]
