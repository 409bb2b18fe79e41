"""Models assembled from research.layers."""

from research.models.decoder import Block, DecoderLM, ModelConfig, init_params
from research.models.encoder import EncoderConfig, EncoderModel

__all__ = ["Block", "DecoderLM", "EncoderConfig", "EncoderModel", "ModelConfig", "init_params"]
