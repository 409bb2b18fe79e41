"""The encoder tasks' pieces: BERT masking statistics, the package-classification rows, the model config."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from research.data import stdlib_packages
from research.tokenizers.base import MASK_ID, NUM_SPECIAL
from research.train.tasks import task_config
from research.train.tasks_encoder import encoder_model_config, mlm_corrupt


def test_mlm_corrupt_follows_bert_proportions():
    rng = np.random.default_rng(0)
    tokens = rng.integers(NUM_SPECIAL, 300, (64, 512)).astype(np.int32)
    tokens[:, ::50] = 6  # [EOS]: special, never a target
    segment_ids = np.ones_like(tokens)
    segment_ids[:, 400:] = 0  # padding: never a target
    inputs, weights = mlm_corrupt(
        jax.random.key(0),
        jnp.asarray(tokens),
        jnp.asarray(segment_ids),
        rate=0.15,
        mask_token=0.8,
        random_token=0.1,
        mask_id=MASK_ID,
        special_ids=tuple(range(NUM_SPECIAL)),
        vocab_size=300,
    )
    inputs, targets = np.asarray(inputs), np.asarray(weights).astype(bool)
    eligible = (segment_ids == 1) & (tokens >= NUM_SPECIAL)
    assert not targets[~eligible].any() and (inputs[~targets] == tokens[~targets]).all()
    # ~26k eligible tokens: binomial standard deviations are ~0.002 (rate) and ~0.006 (shares); 4 sigma margins.
    assert abs(targets.sum() / eligible.sum() - 0.15) < 0.01
    t_in, t_orig = inputs[targets], tokens[targets]
    masked = t_in == MASK_ID
    kept = t_in == t_orig
    assert abs(masked.mean() - 0.8) < 0.025
    assert abs(kept.mean() - 0.1 - 0.1 / 293) < 0.025  # a random replacement draws the original 1/293 of the time
    assert abs((~masked & ~kept).mean() - 0.1) < 0.025
    assert ((t_in[~masked] >= NUM_SPECIAL) & (t_in[~masked] < 300)).all()


def test_mlm_corrupt_never_targets_or_draws_special_ids_anywhere_in_the_vocabulary():
    # A pretrained BERT's specials: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, amid its text ids.
    special = (0, 100, 101, 102, 103)
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 200, (32, 256)).astype(np.int32)
    tokens[:, 0], tokens[:, -1] = 101, 102
    inputs, weights = mlm_corrupt(
        jax.random.key(1),
        jnp.asarray(tokens),
        jnp.ones_like(jnp.asarray(tokens)),
        rate=0.5,
        mask_token=0.0,
        random_token=1.0,  # every target replaced by a random id: the draws are all visible
        mask_id=103,
        special_ids=special,
        vocab_size=200,
    )
    inputs, targets = np.asarray(inputs), np.asarray(weights).astype(bool)
    assert not targets[np.isin(tokens, special)].any() and targets.sum() > 3000
    assert not np.isin(inputs[targets], special).any() and (inputs[targets] < 200).all()
    assert len(np.unique(inputs[targets])) == 200 - len(special)  # every regular id is drawn


def test_classification_rows_and_split():
    row = stdlib_packages.render((np.array([9, 8, 7]), 2), seq_len=6, cls_id=2)
    np.testing.assert_array_equal(row["tokens"], [2, 9, 8, 7, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 0, 0])
    assert row["label"].tolist() == [2]
    paths = [f"email/mod_{i}.py" for i in range(400)]
    held = [p for p in paths if stdlib_packages.is_heldout(p, 20)]
    assert held == [p for p in paths if stdlib_packages.is_heldout(p, 20)]  # a function of the path alone
    assert 0.12 < len(held) / len(paths) < 0.28
    examples = [(np.arange(3) + i, i % 3) for i in range(10)]
    assert stdlib_packages.majority_fraction(examples, examples) == 0.4


def test_encoder_model_config_reads_the_encoder_section():
    c = task_config("classify")
    c.model.update(position="relative", num_layers=2, d_model=32, num_heads=4, num_kv_heads=4)
    c.encoder.update(post_norm=True, pooling="mean", relative_buckets=16)
    c.encoder.type_vocab_size = 2
    tokenizer = types.SimpleNamespace(vocab_size=300, pad_id=5)  # a pretrained tokenizer's pad need not be 0
    m = encoder_model_config(c, tokenizer)
    assert (m.post_norm, m.pooling, m.relative_buckets, m.num_layers, m.vocab_size) == (True, "mean", 16, 2, 300)
    assert (m.type_vocab_size, m.pad_id) == (2, 5)
    assert m.num_labels == len(c.classify.packages.split(","))


def test_span_corruption_hides_spans_behind_sentinels_and_round_trips():
    from research.train.tasks_seq2seq import seq2seq_batch, span_corrupt

    tokens = np.arange(10, 110, dtype=np.int32)  # 100 distinct regular tokens
    inputs, targets = span_corrupt(
        tokens, np.random.default_rng(0), noise_density=0.15, mean_span_length=3.0, sentinel_start=500, eos_id=6
    )
    sentinels = [t for t in inputs if t >= 500]
    assert sentinels == [t for t in targets if t >= 500] == list(range(500, 505))  # round(15 / 3) spans, in order
    assert targets[-1] == 6 and len(targets) == 15 + 5 + 1
    # Filling each sentinel of the inputs with the tokens it precedes in the targets restores the row.
    hidden, current = {}, None
    for t in targets[:-1]:
        if t >= 500:
            current = int(t)
            hidden[current] = []
        else:
            hidden[current].append(int(t))
    restored = [x for t in inputs for x in (hidden[int(t)] if t >= 500 else [int(t)])]
    assert restored == tokens.tolist()
    batch = seq2seq_batch([(inputs, targets)], input_len=96, target_len=24)
    assert batch["inputs"].shape == (1, 96) and batch["input_segment_ids"].sum() == len(inputs)
    assert batch["targets"].shape == (1, 24) and batch["target_segment_ids"].sum() == len(targets)
