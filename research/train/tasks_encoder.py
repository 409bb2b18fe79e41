"""Encoder tasks: masked-LM pretraining ("mlm") and sequence classification ("classify").

    python -m research.main --config experiments/bert_classify.py --workdir DIR

mlm: BERT's objective on the packed corpus rows. Each step draws, from the
step's rng, 15% (mlm.mask_rate) of the non-special tokens as targets; of those
80% are replaced by [MASK], 10% by a random token, 10% kept (mlm.mask_token,
mlm.random_token). The loss is the cross-entropy at the targets only.

classify: [CLS] pooled -> classifier, on research.data.stdlib_packages (which
stdlib package a snippet comes from). Start it from an mlm run with
train.init_from: both tasks build the same EncoderModel (num_labels comes from
classify.packages in both), so every parameter but nothing new is matched.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import config as config_lib
from research.data import stdlib_packages
from research.models.encoder import POOLINGS, EncoderConfig, EncoderModel
from research.tokenizers.base import NUM_SPECIAL
from research.train.step import apply_with_aux, objective_sums
from research.train.tasks import Task, data_spec, register_task


def encoder_model_config(config, tokenizer) -> EncoderConfig:
    """config.model (as for every task) + config.encoder; num_labels from classify.packages, pad_id
    from the tokenizer."""
    base = dataclasses.asdict(config_lib.model_config(config, tokenizer.vocab_size))
    e = config.encoder
    if e.pooling not in POOLINGS:
        raise ValueError(f"encoder.pooling={e.pooling!r}; choose one of {POOLINGS}")
    return EncoderConfig(
        **base,
        post_norm=e.post_norm,
        pooling=e.pooling,
        relative_buckets=e.relative_buckets,
        relative_max_distance=e.relative_max_distance,
        type_vocab_size=e.get("type_vocab_size", 0),  # .get: configs saved before the key
        num_labels=len(stdlib_packages.parse_packages(config.classify.packages)),
        pad_id=tokenizer.pad_id,
    )


def mlm_corrupt(rng, tokens, segment_ids, *, rate, mask_token, random_token, mask_id, special_ids, vocab_size):
    """(inputs, target weights): BERT's masking of `rate` of the real tokens that are not special_ids.

    Of the targets, `mask_token` become [MASK], `random_token` a uniformly random
    regular (non-special) token, the rest stay as they are (so the model can't assume an
    unmasked token is never a target). special_ids: the tokenizer's (Tokenizer.special_ids),
    anywhere in the vocabulary (a pretrained BERT's [CLS] is 101).
    """
    k_pick, k_how, k_tok = jax.random.split(rng, 3)
    candidates = (segment_ids != 0) & ~jnp.isin(tokens, jnp.asarray(special_ids, jnp.int32))
    targets = candidates & (jax.random.uniform(k_pick, tokens.shape) < rate)
    how = jax.random.uniform(k_how, tokens.shape)
    regular = np.setdiff1d(np.arange(vocab_size), special_ids).astype(np.int32)
    random_ids = jnp.asarray(regular)[jax.random.randint(k_tok, tokens.shape, 0, len(regular))]
    inputs = jnp.where(targets & (how < mask_token), mask_id, tokens)
    inputs = jnp.where(targets & (how >= mask_token) & (how < mask_token + random_token), random_ids, inputs)
    return inputs, targets.astype(jnp.float32)


MLM_SECTION = dict(
    mask_rate=0.15,  # share of the real, non-special tokens that are targets
    mask_token=0.8,  # of the targets: replaced by [MASK]
    random_token=0.1,  # of the targets: replaced by a random token (the rest are kept)
)
CLASSIFY_SECTION = dict(
    packages="asyncio,email,idlelib,tkinter,unittest,multiprocessing",  # stdlib packages = the classes
    heldout_percent=20,  # files (by a hash of their path) whose snippets are eval examples
    eval_examples=512,  # eval snippets (a fixed sample of the held-out files' chunks)
)


class _EncoderTask(Task):
    # Both tasks build the same EncoderModel (num_labels from classify.packages), so both carry both sections.
    config_sections = {"mlm": MLM_SECTION, "classify": CLASSIFY_SECTION}
    samples_after_training = False
    decoder = False

    @classmethod
    def validate_config(cls, config) -> None:
        """Both sections, which both tasks carry (classify.packages sizes the model of either)."""
        m = config.mlm
        if not 0 < m.mask_rate < 1:
            raise ValueError(f"mlm.mask_rate={m.mask_rate} must be in (0, 1)")
        if m.mask_token < 0 or m.random_token < 0 or m.mask_token + m.random_token > 1:
            raise ValueError(
                f"mlm.mask_token={m.mask_token} and mlm.random_token={m.random_token} must be >= 0 with sum <= 1"
            )
        stdlib_packages.parse_packages(config.classify.packages)  # names classify.packages
        config_lib.check_range(config, "classify.heldout_percent", 0, 100, lo_open=True, hi_open=True)
        config_lib.check_range(config, "classify.eval_examples", 1)

    def __init__(self, config, tokenizer):
        self.validate_config(config)
        super().__init__(config, tokenizer)

    def build_model(self):
        return EncoderModel(encoder_model_config(self.config, self.tokenizer))

    def init_inputs(self) -> dict:
        tokens = jnp.full((1, self.config.data.seq_len), NUM_SPECIAL, jnp.int32)  # full rows: variants tile them
        return {"tokens": tokens, "segment_ids": jnp.ones_like(tokens), "head": "all"}


@register_task("mlm")
class MLMTask(_EncoderTask):
    """Masked-LM pretraining on the packed text of config.data; see the module docstring."""

    def _sums(self, params, batch, rng):
        m = self.config.mlm
        inputs, weights = mlm_corrupt(
            rng,
            batch["tokens"],
            batch["segment_ids"],
            rate=m.mask_rate,
            mask_token=m.mask_token,
            random_token=m.random_token,
            mask_id=self.tokenizer.mask_id,
            special_ids=self.tokenizer.special_ids,
            vocab_size=self.tokenizer.vocab_size,
        )
        logits, aux, metrics = apply_with_aux(
            self.model.apply,
            {"params": params},
            inputs,
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            head="mlm",
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"])
        count = jnp.sum(weights)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["tokens"]) * weights)
        return jnp.sum(losses * weights), count, correct, aux, metrics

    def loss(self, params, frozen, batch, rng):
        del frozen
        nll, count, correct, aux, metrics = self._sums(params, batch, rng)
        return objective_sums(nll, count, aux, metrics, mlm_accuracy=correct)

    def eval_sums(self, params, frozen, batch) -> dict:
        del frozen
        nll, count, correct, _, _ = self._sums(params, batch, jax.random.key(0))  # the same masks every eval
        return {"loss_sum": nll, "count": count, "mlm_accuracy_sum": correct}


@register_task("classify")
class ClassifyTask(_EncoderTask):
    """Which stdlib package a snippet comes from ([CLS] classification); see the module docstring."""

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        c = config.classify
        self.spec = stdlib_packages.PackageSpec(
            packages=stdlib_packages.parse_packages(c.packages),
            heldout_percent=c.heldout_percent,
            seq_len=config.data.seq_len,
            global_batch_size=config.train.batch_size,
            seed=config.train.seed,
        )
        self.examples = stdlib_packages.build_examples(data_spec(config), self.spec, tokenizer)

    def train_iterator(self, process_index: int, process_count: int):
        return stdlib_packages.make_train_iterator(
            self.examples["train"],
            self.spec,
            self.tokenizer.cls_id,
            process_index=process_index,
            process_count=process_count,
        )

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        return stdlib_packages.make_eval_batches(
            self.examples["eval"],
            self.spec,
            self.tokenizer.cls_id,
            num_examples=self.config.classify.eval_examples,
            process_index=process_index,
            process_count=process_count,
        )

    def _sums(self, params, batch):
        logits, aux, metrics = apply_with_aux(
            self.model.apply, {"params": params}, batch["tokens"], segment_ids=batch["segment_ids"], head="classify"
        )
        labels = batch["label"][:, 0]
        nll = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return nll, jnp.asarray(labels.shape[0], jnp.float32), correct, aux, metrics

    def loss(self, params, frozen, batch, rng):
        del frozen, rng
        nll, count, correct, aux, metrics = self._sums(params, batch)
        return objective_sums(nll, count, aux, metrics, accuracy=correct)

    def eval_sums(self, params, frozen, batch) -> dict:
        del frozen
        nll, count, correct, _, _ = self._sums(params, batch)
        return {"loss_sum": nll, "count": count, "accuracy_sum": correct}

    def evaluate(self, params, frozen) -> dict:
        """The majority-class baseline on the same eval examples (constant; logged beside eval_accuracy)."""
        del params, frozen
        labels = np.concatenate([b["label"][:, 0] for b in self.eval_batches(0, 1)])
        train_counts = np.bincount([label for _, label in self.examples["train"]], minlength=len(self.spec.packages))
        return {"majority_baseline": float(np.mean(labels == np.argmax(train_counts)))}
