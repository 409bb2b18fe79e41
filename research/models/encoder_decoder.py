"""Encoder-decoder Transformer (T5 family): an encoder Stack, a causal decoder Stack with
cross-attention to the encoder output, one shared token embedding, an LM head.

Decoding (research.decode.seq2seq) runs `encode` once, then `decode` with
decode=True: the first call projects the encoder output into each layer's
cross-attention keys/values and caches them beside the self-attention KV cache;
later single-token steps pass encoded=None and read the caches.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.decoder import ModelConfig
from research.models.encoder import Stack, check_config, padding_segments


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(ModelConfig):
    """ModelConfig plus what only encoder-decoders have; num_layers is the encoder's depth."""

    num_decoder_layers: int = -1  # -1: num_layers
    pad_id: int = 0  # tokens equal to it need a padding mask
    decoder_start_id: int = 0  # the decoder's first input (T5: the pad id)
    relative_buckets: int = 32  # position="relative" (T5 bias)
    relative_max_distance: int = 128

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers == -1 else self.num_decoder_layers


class EncoderDecoder(nn.Module):
    config: EncoderDecoderConfig

    def setup(self):
        c = self.config
        check_config(c)
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=init, dtype=c.dtype, param_dtype=c.param_dtype)
        self.encoder = Stack(c, c.num_layers, causal=False)
        self.decoder = Stack(c, c.decoder_layers, causal=True, cross=True)
        if not c.tie_embeddings:
            head_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab"))
            self.lm_head = nn.Dense(
                c.vocab_size, use_bias=False, kernel_init=head_init, dtype=c.dtype, param_dtype=c.param_dtype
            )

    def encode(self, inputs, *, segment_ids=None, positions=None):
        """inputs: [b, in_len] int; segment_ids: [b, in_len], 0 = padding -> [b, in_len, d]."""
        segment_ids = padding_segments(inputs, segment_ids, self.config.pad_id, "input_segment_ids")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        return self.encoder(self.embed(inputs), positions, segment_ids)

    def decode(
        self,
        targets,
        encoded,
        *,
        encoded_segment_ids=None,
        segment_ids=None,
        positions=None,
        decode: bool = False,
    ):
        """targets: [b, len] decoder inputs (the start id, then the target shifted right);
        encoded: [b, in_len, d] from `encode` (None in decode steps after the first) -> logits [b, len, vocab].

        segment_ids pair decoder rows with encoder rows of the same id (packed examples); 0 = padding.
        """
        c = self.config
        if segment_ids is None:
            segment_ids = jnp.ones(targets.shape, jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(targets.shape[1]), targets.shape)
        x = self.decoder(
            self.embed(targets),
            positions,
            segment_ids,
            context=encoded,
            context_segment_ids=encoded_segment_ids,
            decode=decode,
        )
        if c.tie_embeddings:
            logits = self.embed.attend(x)
            if c.scale_tied_logits:  # T5 scales the decoder output by d_model**-0.5 before its tied head
                logits = logits * (c.d_model**-0.5)
        else:
            logits = self.lm_head(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits.astype(jnp.float32)

    def __call__(
        self,
        inputs,
        targets,
        *,
        input_segment_ids=None,
        target_segment_ids=None,
        input_positions=None,
        target_positions=None,
    ):
        """Teacher-forced logits [b, target_len, vocab] for decoder inputs `targets` given `inputs`."""
        input_segment_ids = padding_segments(inputs, input_segment_ids, self.config.pad_id, "input_segment_ids")
        encoded = self.encode(inputs, segment_ids=input_segment_ids, positions=input_positions)
        return self.decode(
            targets,
            encoded,
            encoded_segment_ids=input_segment_ids,
            segment_ids=target_segment_ids,
            positions=target_positions,
        )


def shift_right(targets, start_id: int):
    """[b, len] targets -> decoder inputs [start, t0, ..., t_{len-2}] (teacher forcing)."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)


def init_params(model: EncoderDecoder, rng: jax.Array, batch: int = 1):
    """Boxed (logically partitioned) parameters; call under jax.eval_shape for shapes only."""
    n = min(8, model.config.max_len)
    ones = jnp.ones((batch, n), jnp.int32)
    return model.init(rng, ones, ones, input_segment_ids=ones)["params"]
