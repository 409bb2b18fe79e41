"""Bits per byte of held-out text: the tokenizer-independent measure of a language model.

Loss per token can't compare tokenizers (a token covers one byte for one, four for
another); the total code length of the same text, divided by its UTF-8 bytes, can.
Every document is cut into rows of [BOS] + (seq_len - 1) tokens, so every one of its
tokens (and its final EOS) is predicted exactly once, from the context within its row.
"""

import math

import jax
import numpy as np

from research.train.step import lm_loss_sums


def document_rows(tokenizer, texts, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, segment_ids, positions) int32 [rows, seq_len] covering every token of every text."""
    rows = []
    for text in texts:
        ids = tokenizer.encode(text, add_eos=True)
        for start in range(0, len(ids), seq_len - 1):
            rows.append(np.concatenate([[tokenizer.bos_id], ids[start : start + seq_len - 1]]))
    tokens = np.full((len(rows), seq_len), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        segment_ids[i, : len(row)] = 1
    positions = np.where(segment_ids > 0, np.arange(seq_len)[None], 0).astype(np.int32)
    return tokens, segment_ids, positions


def bits_per_byte(model, params, tokenizer, texts, *, seq_len: int, batch_size: int = 16) -> dict:
    """{"bits_per_byte", "nats", "bytes", "tokens"} of `texts` under the model."""
    if not texts:
        raise ValueError("bits_per_byte needs at least one text")
    tokens, segment_ids, positions = document_rows(tokenizer, texts, seq_len)
    pad = -len(tokens) % batch_size  # whole batches: one compiled shape
    tokens, segment_ids, positions = (np.pad(a, ((0, pad), (0, 0))) for a in (tokens, segment_ids, positions))
    nll_fn = jax.jit(lambda p, b: lm_loss_sums(p, model.apply, b))
    nats = count = 0.0
    for start in range(0, len(tokens), batch_size):
        batch = {
            "tokens": tokens[start : start + batch_size],
            "segment_ids": segment_ids[start : start + batch_size],
            "positions": positions[start : start + batch_size],
        }
        loss_sum, n = jax.device_get(nll_fn(params, batch))
        nats += float(loss_sum)
        count += float(n)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"bits_per_byte": nats / math.log(2) / num_bytes, "nats": nats, "bytes": num_bytes, "tokens": count}
