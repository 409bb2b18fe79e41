"""Preference-pair batches for the reward and dpo tasks, and the pairwise forward they share.

config.preference names the pairs (generated from the toy language, or JSONL
files; research/post/prompts.py). Each pair is rendered with post.template into
right-padded rows; a batch holds [rows, 2, seq_len] arrays (axis 1: chosen,
rejected), so gradient accumulation, which splits axis 0, keeps pairs whole.
Held-out pairs are generated without label noise: eval accuracy is agreement
with the gold preference.

The train iterator draws global batches of pair indices from a seeded shuffle,
reshuffled each epoch; each process keeps its rows. It is a grain iterator, so
checkpoints save and restore its position.
"""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from research.post import prompts as prompts_lib

PREFERENCE_SECTION = dict(
    source="sentiment",  # sentiment (pairs generated from the toy language) | a JSONL file: prompt, chosen, rejected
    eval_source="",  # source=JSONL: the held-out pairs' JSONL file
    num_train_pairs=20_000,  # source=sentiment
    num_eval_pairs=512,  # source=sentiment: held-out pairs (labelled by the gold reward, no noise)
    prompt_words=8,  # source=sentiment
    continuation_words=16,  # source=sentiment
    label_noise=0.0,  # source=sentiment: probability that a pair's label is flipped
    bt_scale=0.0,  # source=sentiment: P(a > b) = sigmoid(bt_scale * (r_a - r_b)); 0: the higher reward always wins
)


def check_preference_config(config) -> None:
    p = config.preference
    if not p.source:
        raise ValueError("preference.source='' names no pairs: 'sentiment' or a JSONL file of pairs")
    if p.source == "sentiment":
        for key in ("num_train_pairs", "num_eval_pairs", "prompt_words", "continuation_words"):
            if p[key] < 1:
                raise ValueError(f"preference.{key}={p[key]} must be >= 1")
        if not 0.0 <= p.label_noise <= 0.5:
            raise ValueError(f"preference.label_noise={p.label_noise} must be in [0, 0.5]")
        if p.bt_scale < 0:
            raise ValueError(f"preference.bt_scale={p.bt_scale} must be >= 0 (0: deterministic labels)")
    elif not p.eval_source:
        raise ValueError(
            f"preference.source={p.source!r} is a JSONL file: preference.eval_source must name held-out pairs"
        )


class PairData:
    """Rendered train and eval pairs of one config (pairs are generated or read once, at construction)."""

    def __init__(self, config, tokenizer):
        p, seed = config.preference, config.train.seed
        template, seq_len = config.post.template, config.data.seq_len
        self.train = prompts_lib.pair_arrays(
            tokenizer, template, prompts_lib.preference_pairs(p, "train", seed), seq_len
        )
        eval_cfg = p.copy_and_resolve_references()
        eval_cfg.label_noise, eval_cfg.bt_scale = 0.0, 0.0
        self.eval = prompts_lib.pair_arrays(tokenizer, template, prompts_lib.preference_pairs(eval_cfg, "eval", seed),
                                            seq_len)  # fmt: skip
        self.batch_size, self.seed = config.train.batch_size, seed

    def train_iterator(self, process_index: int, process_count: int):
        n = len(self.train["tokens"])
        if n < self.batch_size:
            raise ValueError(f"{n} preference pairs are fewer than train.batch_size={self.batch_size}")
        per = self.batch_size // process_count
        rows = slice(process_index * per, (process_index + 1) * per)
        arrays = self.train
        dataset = (
            grain.MapDataset.range(n)
            .shuffle(seed=self.seed)
            .repeat()
            .batch(self.batch_size, drop_remainder=True)
            .map(lambda idx: {k: v[np.asarray(idx)[rows]] for k, v in arrays.items()})
        )
        return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

    def eval_batches(self, num_batches: int, process_index: int, process_count: int) -> list[dict]:
        """Up to `num_batches` batches of held-out pairs, in order (fewer when there are fewer pairs)."""
        n = len(self.eval["tokens"])
        per = self.batch_size // process_count
        out = []
        for b in range(min(num_batches, n // self.batch_size)):
            start = b * self.batch_size + process_index * per
            out.append({k: v[start : start + per] for k, v in self.eval.items()})
        return out


def flatten_pairs(batch) -> dict:
    """[rows, 2, L] leaves -> [2 * rows, L] (chosen, rejected interleaved) for one forward pass."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)


def sequence_logprobs(logits, flat) -> jax.Array:
    """[2 * rows] log-probability of each row's response tokens, from logits over its flattened rows."""
    from research.post.logprobs import token_logprobs

    logp = token_logprobs(logits, flat["tokens"])
    return jnp.sum(logp * flat["response_mask"].astype(jnp.float32), axis=1)


class PairTask:
    """Mixin of the tasks that learn from preference pairs (reward, dpo): the `preference` section,
    the pairs, their train iterator and eval batches. Goes before the task's base class."""

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        check_preference_config(config)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.pairs = PairData(config, tokenizer)

    def train_iterator(self, process_index, process_count):
        return self.pairs.train_iterator(process_index, process_count)

    def eval_batches(self, process_index, process_count):
        return self.pairs.eval_batches(self.config.train.eval_batches, process_index, process_count)
