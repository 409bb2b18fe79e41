import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from research.models import DecoderLM, ModelConfig, init_params
from research.tokenizers import ByteTokenizer
from research.train.bits_per_byte import bits_per_byte, document_rows

TEXTS = ["def f(x):\n    return x\n", "λ = 'ünïcode' * 3", "x" * 50]


def test_every_token_is_predicted_exactly_once():
    tok = ByteTokenizer()
    tokens, segment_ids, _ = document_rows(tok, TEXTS, seq_len=16)
    expected = sum(len(tok.encode(t, add_eos=True)) for t in TEXTS)
    # Each row is [BOS] + tokens; the BOS is context only.
    assert int((segment_ids > 0).sum()) - len(tokens) == expected
    assert (tokens[:, 0] == tok.bos_id).all()


def test_uniform_model_costs_log2_vocab_per_token():
    tok = ByteTokenizer()
    model = DecoderLM(
        ModelConfig(
            vocab_size=tok.vocab_size, num_layers=1, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32, max_len=16
        )
    )
    params = jax.tree.map(np.zeros_like, nn.unbox(init_params(model, jax.random.key(0))))  # logits all 0
    result = bits_per_byte(model, params, tok, TEXTS, seq_len=16, batch_size=4)
    tokens = sum(len(tok.encode(t, add_eos=True)) for t in TEXTS)
    num_bytes = sum(len(t.encode()) for t in TEXTS)
    assert result["tokens"] == tokens and result["bytes"] == num_bytes
    assert result["bits_per_byte"] == pytest.approx(tokens * math.log2(tok.vocab_size) / num_bytes, rel=1e-5)


def test_empty_texts_rejected():
    with pytest.raises(ValueError, match="at least one text"):
        bits_per_byte(None, None, ByteTokenizer(), [], seq_len=8)
