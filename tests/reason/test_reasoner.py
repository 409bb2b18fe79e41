"""The Reasoner's modes and budgets on a tiny random model with the reasoning tags as added tokens."""

import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from research.data import instructions, reasoning
from research.models import DecoderLM, ModelConfig, init_params
from research.reason.reasoner import Reasoner
from research.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def reasoner():
    tok = ByteTokenizer().with_added_tokens(reasoning.ADDED_TOKENS.split())
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                                  mlp_dim=64, max_len=96, tie_embeddings=False))  # fmt: skip
    params = nn.unbox(jax.jit(lambda r: init_params(model, r))(jax.random.key(0)))
    run = types.SimpleNamespace(tokenizer=tok, workdir="tiny", for_decoding=lambda: (model, params))
    return Reasoner(run)


def test_modes_force_the_first_tag_and_budgets_cap_thinking(reasoner):
    examples = [instructions.make_example(i, split="eval", seed=0, kinds=("add:digits=2",)) for i in range(3)]
    prompts = [e.prompt for e in examples]
    think = reasoner.answer(prompts, mode="think", max_new_tokens=40, max_thinking=5, num_samples=2, temperature=1.0)
    direct = reasoner.answer(prompts, mode="direct", max_new_tokens=8)
    assert all(t.startswith(reasoning.THINK_OPEN) for row in think.texts for t in row)
    assert all(t.startswith(reasoning.ANSWER_OPEN) for row in direct.texts for t in row)
    assert think.thinking.shape == (3, 2) and np.all(think.thinking <= 5)
    # A random model rarely closes on its own: the cap then forces </think><answer> after exactly 5 tokens.
    capped = [t for row in think.texts for t in row if reasoning.THINK_CLOSE in t]
    assert capped and all(t.split(reasoning.THINK_CLOSE)[1].startswith(reasoning.ANSWER_OPEN) for t in capped)
    assert not direct.thinking.any()
    correct = Reasoner.correct(examples, think)
    assert correct.shape == (3, 2) and correct.dtype == bool


def test_bad_settings_and_a_run_without_tags(reasoner):
    with pytest.raises(ValueError, match="mode='cot'"):
        reasoner.config(mode="cot", max_new_tokens=8)
    with pytest.raises(ValueError, match="max_thinking"):
        reasoner.config(mode="think", max_new_tokens=8, max_thinking=8)
    with pytest.raises(ValueError, match="num_samples=0"):
        reasoner.config(mode="think", max_new_tokens=8, num_samples=0)
    plain = types.SimpleNamespace(tokenizer=ByteTokenizer(), workdir="plain", for_decoding=lambda: (None, None))
    with pytest.raises(ValueError, match="data.added_tokens"):
        Reasoner(plain)
