"""KV-cache decoding computes each variant's own function: sparse patterns via token positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.attention import get_decode_mask
from research.config import default_config
from research.decode import generate, init_cache, left_pad
from research.models import DecoderLM, ModelConfig, init_params
from tests.attention.test_variants import LITERAL_MASKS

OPTIONS = dict(default_config().model.attention_options, window=2, block_size=2, num_global=1, stride=2)


def make(attention):
    config = ModelConfig(
        vocab_size=37,
        num_layers=2,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=64,
        max_len=16,
        attention=attention,
        attention_options=tuple(sorted(OPTIONS.items())),
    )
    model = DecoderLM(config)
    return model, nn.unbox(init_params(model, jax.random.key(0)))


def cached_logits(model, params, prompts, continuation):
    """Logits after each prompt's last token and each continuation token, via the KV cache."""
    tokens, positions, seg = left_pad(prompts, max(map(len, prompts)), 0)
    cache = init_cache(model, len(prompts), tokens.shape[1] + continuation.shape[1])
    # Jitted: one compile for the prefill and one for every decode step (op by op is several times slower).
    apply = jax.jit(lambda variables, t, p, s: model.apply(variables, t, positions=p, segment_ids=s, decode=True,
                                                           mutable=["cache"]))  # fmt: skip
    logits, mutated = apply({"params": params, "cache": cache}, tokens, positions, seg)
    out, pos = [logits[:, -1]], positions[:, -1]
    for i in range(continuation.shape[1] - 1):
        pos = pos + 1
        ones = jnp.ones((len(prompts), 1), jnp.int32)
        logits, mutated = apply(
            {"params": params, "cache": mutated["cache"]}, continuation[:, i : i + 1], pos[:, None], ones
        )
        out.append(logits[:, 0])
    return jnp.stack(out, axis=1)  # [b, steps, vocab]


@pytest.mark.parametrize("attention", ["sliding", "block_sparse", "strided"])
def test_cached_decoding_equals_the_variants_full_forward(attention):
    model, params = make(attention)
    prompts = [[3, 4, 5, 6], [7, 8]]  # rows of different lengths: left padding shifts slots, not positions
    continuation = jnp.array([[9, 10, 11, 12], [13, 14, 15, 16]])
    got = cached_logits(model, params, prompts, continuation)
    dense_model, _ = make("dense")
    dense = cached_logits(dense_model, params, prompts, continuation)
    for row, prompt in enumerate(prompts):
        seq = prompt + continuation[row].tolist()
        padded = jnp.array([seq + [0] * (8 - len(seq))])  # a length the blocks divide; causal, so harmless
        expected = model.apply({"params": params}, padded)[0, len(prompt) - 1 : len(seq) - 1]
        # float32; the cache sums the same terms in another order: worst measured 9.5e-7 on logits up to
        # ~4.4 (2 ulps), so 5e-6 leaves ~5x.
        np.testing.assert_allclose(got[row], expected, atol=5e-6)
    # The patterns are narrow enough to matter here (dense decoding differs), so this test can fail.
    assert np.abs(dense - got).max() > 1e-2


# What cached decoding may attend to at positions 0..7 with OPTIONS (window 2; blocks of 2, block 0
# global; stride 2), written out by hand from the patterns' definitions: row = query, column = key,
# 1 = may attend. The test above only checks decoding against the variant's full forward, which would
# agree with a pattern wrong the same way in both (research/attention/sparse.py defines both).
DECODE_MASKS = {
    "sliding": [  # the 2 most recent keys, itself included
        "10000000",
        "11000000",
        "01100000",
        "00110000",
        "00011000",
        "00001100",
        "00000110",
        "00000011",
    ],
    # own and previous block {0,1} {2,3} {4,5} {6,7}, and block 0: the full forward's causal mask
    "block_sparse": LITERAL_MASKS[("block_sparse", True)],
    "strided": [  # own pair, and the last key of every pair (the odd positions)
        "10000000",
        "11000000",
        "01100000",
        "01110000",
        "01011000",
        "01011100",
        "01010110",
        "01010111",
    ],
}


@pytest.mark.parametrize("attention", list(DECODE_MASKS))
def test_decode_patterns_equal_the_hand_written_masks(attention):
    pattern = get_decode_mask(attention, OPTIONS)
    q_pos, kv_pos = jnp.arange(8)[:, None], jnp.arange(8)[None, :]
    got = np.asarray(pattern(q_pos, kv_pos) & (kv_pos <= q_pos))  # the cache adds the causal mask (slot order)
    want = np.array([[c == "1" for c in row] for row in DECODE_MASKS[attention]])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("attention", ["performer"])
def test_variants_without_cached_decoding_say_so(attention):
    model, params = make(attention)
    with pytest.raises(ValueError, match=f"model.attention='{attention}' has no KV-cache decoding"):
        generate(model, params, [[3, 4]], max_new_tokens=2)
