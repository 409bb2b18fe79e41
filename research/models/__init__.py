"""Models assembled from research.layers."""

from research.models.decoder import Block, DecoderLM, ModelConfig, init_params
from research.models.encoder import EncoderConfig, EncoderModel
from research.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig

__all__ = [
    "Block",
    "DecoderLM",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "EncoderModel",
    "ModelConfig",
    "init_params",
]
