"""Encoder-decoder generation: encode once, then the same prefill + token loop as decoder-only models.

The encoder output is computed once per call; the decoder's prefill (the start
token) projects it into every layer's cross-attention keys/values, which stay
in the cache; each later step feeds one token and reads both caches.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.decode.sampler import SamplingConfig, decode_loop


def pad_inputs(inputs: Sequence[Sequence[int]], pad_id: int):
    """Right-pads encoder inputs: (tokens, segment_ids) int32 [batch, longest]; padding has segment id 0."""
    if not inputs or any(len(x) == 0 for x in inputs):
        raise ValueError("inputs must be non-empty token lists")
    length = max(len(x) for x in inputs)
    tokens = np.full((len(inputs), length), pad_id, np.int32)
    segment_ids = np.zeros_like(tokens)
    for i, x in enumerate(inputs):
        tokens[i, : len(x)] = x
        segment_ids[i, : len(x)] = 1
    return tokens, segment_ids


def _init_cache(model, params, encoded, segment_ids, cache_len):
    """Zeroed self- and cross-attention caches, shaped by an abstract decode pass."""
    batch = encoded.shape[0]

    def shapes():
        return model.apply(
            {"params": params},
            jnp.zeros((batch, cache_len), jnp.int32),
            encoded,
            encoded_segment_ids=segment_ids,
            decode=True,
            method=model.decode,
            mutable=["cache"],
        )[1]["cache"]

    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))


@functools.partial(jax.jit, static_argnames=("model", "config"))
def _generate(params, inputs, segment_ids, rng, *, model, config):
    batch = inputs.shape[0]
    encoded = model.apply({"params": params}, inputs, segment_ids=segment_ids, method=model.encode)  # once
    cache = _init_cache(model, params, encoded, segment_ids, 1 + config.max_new_tokens)

    def forward(cache, tokens, positions, target_segment_ids, context=None, context_segment_ids=None):
        logits, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            context,
            encoded_segment_ids=context_segment_ids,
            segment_ids=target_segment_ids,
            positions=positions,
            decode=True,
            method=model.decode,
            mutable=["cache"],
        )
        return logits[:, -1], mutated["cache"]

    start = jnp.full((batch, 1), model.config.decoder_start_id, jnp.int32)
    zeros, ones = jnp.zeros((batch, 1), jnp.int32), jnp.ones((batch, 1), jnp.int32)
    logits, cache = forward(cache, start, zeros, ones, encoded, segment_ids)  # prefill fills the cross caches
    new, _ = decode_loop(forward, logits, cache, zeros[:, 0], rng, config=config)  # steps: context=None
    return new["tokens"], new["valid"].sum(axis=1)


def generate_seq2seq(
    model,
    params,
    inputs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    rng=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_id: int | None = None,
) -> list[list[int]]:
    """Per input, up to `max_new_tokens` decoder tokens, up to and including the first stop token.

    model: an EncoderDecoder; pad_id defaults to model.config.pad_id.
    """
    c = model.config
    pad_id = c.pad_id if pad_id is None else pad_id
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    longest = max((len(x) for x in inputs), default=0)
    if c.position == "learned" and max(longest, max_new_tokens + 1) > c.max_len:
        raise ValueError(f"inputs of {longest} or {max_new_tokens} new tokens exceed model.max_len={c.max_len}")
    for i, x in enumerate(inputs):
        bad = [t for t in x if not 0 <= t < c.vocab_size]
        if bad:
            raise ValueError(f"input {i} holds token ids {bad[:5]} outside [0, model.vocab_size={c.vocab_size})")
    tokens, segment_ids = pad_inputs(inputs, pad_id)
    config = SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        stop_tokens=tuple(int(t) for t in stop_tokens),
        pad_id=int(pad_id),
    )
    out, lengths = _generate(params, tokens, segment_ids, jax.random.key(0) if rng is None else rng, model=model,
                             config=config)  # fmt: skip
    return [row[:n] for row, n in zip(np.asarray(out).tolist(), np.asarray(lengths).tolist(), strict=True)]
