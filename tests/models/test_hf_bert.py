"""Parity with Hugging Face BERT (post-LN, token types, pooler, MLM and classification heads).

Float32 on both sides; 1e-4 as for the decoder families. Outputs at padding
positions are not compared: HF lets a padding query attend to the real tokens,
ours gives it a uniform row; neither is used.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

REASON = (
    "torch and transformers are in the peers extra (pip install -e .[peers]): "
    "BERT hidden-state, MLM and classifier parity with Hugging Face is unchecked"
)
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)

from research.models import hf  # noqa: E402

VOCAB, ATOL = 101, 1e-4


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        num_labels=3,
        initializer_range=0.2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    pretrain = transformers.BertForPreTraining(cfg).eval()
    classify = transformers.BertForSequenceClassification(cfg).eval()
    classify.bert.load_state_dict(pretrain.bert.state_dict())  # one encoder, both heads
    state = {k: v.numpy() for k, v in pretrain.state_dict().items()}
    state.update({k: v.numpy() for k, v in classify.state_dict().items() if k.startswith("classifier.")})
    config = hf.config_from_hf(cfg.to_dict())
    params = hf.from_state_dict(state, config, "bert")
    return pretrain, classify, hf.family("bert").build(config), params


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (2, 12))
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0  # the second row is padded
    tokens[1, 7:] = 0
    types = np.zeros_like(tokens)
    types[:, 5:] = 1
    return tokens, mask, types


def test_outputs_match(pair):
    pretrain, classify, ours, params = pair
    tokens, mask, types = _inputs()
    out = ours.apply({"params": nn.unbox(params)}, tokens, segment_ids=mask, token_types=types, head="all")
    t = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    with torch.no_grad():
        theirs = pretrain(**t, output_hidden_states=True)
        their_class = classify(**t).logits.numpy()
    keep = mask.astype(bool)
    diffs = {
        "hidden": np.abs(np.asarray(out["hidden"]) - theirs.hidden_states[-1].numpy())[keep].max(),
        "mlm": np.abs(np.asarray(out["mlm"]) - theirs.prediction_logits.numpy())[keep].max(),
        "classify": np.abs(np.asarray(out["classify"]) - their_class).max(),
    }
    print("bert max abs diffs", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert np.abs(theirs.prediction_logits.numpy()).max() > 0.5
    assert all(v <= ATOL for v in diffs.values()), diffs


def test_export_round_trip_through_transformers(pair, tmp_path):
    pretrain, classify, ours, params = pair
    hf.save_pretrained(str(tmp_path), ours, params, "bert")
    tokens, mask, types = _inputs()
    t = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    with torch.no_grad():
        a = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()(**t).prediction_logits
        b = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path)).eval()(**t).logits
        np.testing.assert_allclose(a.numpy(), pretrain(**t).prediction_logits.numpy(), atol=1e-6)
        np.testing.assert_allclose(b.numpy(), classify(**t).logits.numpy(), atol=1e-6)
    model, again = hf.load_pretrained(str(tmp_path))
    assert model.config == ours.config
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(again), nn.unbox(params))


def test_checkpoint_without_heads_gets_fresh_heads():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    state = {k: v.numpy() for k, v in transformers.BertModel(cfg, add_pooling_layer=False).state_dict().items()}
    params = hf.from_state_dict(state, hf.config_from_hf(cfg.to_dict()), "bert")
    np.testing.assert_array_equal(
        nn.unbox(params)["embed"]["embedding"], state["embeddings.word_embeddings.weight"]
    )  # the encoder comes from the checkpoint ...
    assert nn.unbox(params)["pooler"]["kernel"].shape == (32, 32)  # ... heads from a fresh init
