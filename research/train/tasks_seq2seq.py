"""Encoder-decoder tasks: T5 span-corruption pretraining ("span_corruption") and seq2seq fine-tuning ("seq2seq").

span_corruption: rows of the packed corpus (config.data) become (inputs, targets)
as in T5: seq2seq.noise_density of each row's tokens, in spans of mean length
seq2seq.mean_span_length, are cut out; each span is replaced in the inputs by a
sentinel id, and the targets list every sentinel followed by the tokens it hides,
then [EOS]. Sentinels are seq2seq.num_sentinels ids appended after the tokenizer's
vocabulary (model vocab = tokenizer vocab + num_sentinels in both tasks, so
train.init_from carries every parameter from pretraining to fine-tuning).

seq2seq: research.data.instructions' generated tasks (seq2seq.tasks): input the
prompt, target the answer + [EOS]; evaluation adds exact match of greedy
generations (research.decode.generate_seq2seq) on held-out prompts.

Batches (int32, all 2-D): inputs, input_segment_ids [rows, input_len];
targets, target_segment_ids [rows, target_len] (0 = padding). The decoder reads
the targets shifted right behind the start id (teacher forcing).
"""

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import config as config_lib
from research.data import instructions
from research.decode import generate_seq2seq
from research.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, shift_right
from research.train.step import apply_with_aux, objective_sums
from research.train.tasks import Task, register_task


def seq2seq_model_config(config, tokenizer_vocab: int) -> EncoderDecoderConfig:
    s = config.seq2seq
    base = dataclasses.asdict(config_lib.model_config(config, tokenizer_vocab + s.num_sentinels))
    e = config.encoder
    return EncoderDecoderConfig(
        **base, relative_buckets=e.relative_buckets, relative_max_distance=e.relative_max_distance, pad_id=0
    )


def _kinds(tasks: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in tasks.split(",") if k.strip())


def _segmentation(n: int, k: int, rng) -> np.ndarray:
    """n items cut into k non-empty runs at random: their lengths."""
    cuts = np.sort(rng.choice(np.arange(1, n), k - 1, replace=False)) if k > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [n]]))


def span_corrupt(tokens: np.ndarray, rng, *, noise_density, mean_span_length, sentinel_start, eos_id):
    """One row of real tokens -> (inputs, targets), T5's span corruption. Alternates kept and noise
    runs, starting with a kept one; noise run i becomes sentinel i in the inputs and
    `sentinel i + its tokens` in the targets."""
    n = len(tokens)
    num_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, n - num_noise)
    noise, keep = _segmentation(num_noise, num_spans, rng), _segmentation(n - num_noise, num_spans, rng)
    inputs, targets, at = [], [], 0
    for i in range(num_spans):
        inputs.extend(tokens[at : at + keep[i]])
        at += keep[i]
        inputs.append(sentinel_start + i)
        targets.append(sentinel_start + i)
        targets.extend(tokens[at : at + noise[i]])
        at += noise[i]
    targets.append(eos_id)
    return np.asarray(inputs, np.int32), np.asarray(targets, np.int32)


def _pad(rows, length, field):
    out = np.zeros((len(rows), length), np.int32)
    seg = np.zeros_like(out)
    for i, r in enumerate(rows):
        if len(r) > length:
            raise ValueError(f"a row of {len(r)} tokens exceeds {field}={length}")
        out[i, : len(r)] = r
        seg[i, : len(r)] = 1
    return out, seg


def seq2seq_batch(pairs, input_len, target_len) -> dict:
    inputs, input_seg = _pad([p[0] for p in pairs], input_len, "seq2seq.input_len")
    targets, target_seg = _pad([p[1] for p in pairs], target_len, "seq2seq.target_len")
    return dict(inputs=inputs, input_segment_ids=input_seg, targets=targets, target_segment_ids=target_seg)


class _CorruptedRows(grain.DatasetIterator):
    """Wraps the LM pipeline's checkpointable iterator: each packed batch becomes a span-corrupted one.

    The noise is drawn from a generator seeded by (train.seed, the row's tokens), so
    a resumed run corrupts each row exactly as the uninterrupted run did, and the
    state to save is the parent's.
    """

    def __init__(self, parent, task):
        super().__init__(parent)
        self._task = task

    def __next__(self) -> dict:
        return self._task.corrupt(next(self._parent))

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


SEQ2SEQ_SECTION = dict(
    noise_density=0.15,  # span_corruption: share of each row's tokens hidden
    mean_span_length=3.0,  # span_corruption: mean length of a hidden span
    num_sentinels=32,  # ids appended after the tokenizer's vocabulary, one per hidden span of a row
    tasks="reverse,uppercase,sort,arithmetic",  # seq2seq: research.data.instructions kinds, comma-separated
    num_train_examples=50_000,  # seq2seq: distinct training pairs, reshuffled each epoch
    input_len=64,  # seq2seq: encoder tokens per example (longer prompts are an error)
    target_len=16,  # seq2seq: answer tokens + [EOS] per example
    eval_examples=200,  # seq2seq: held-out prompts checked by exact match of greedy generations
    max_new_tokens=16,  # seq2seq: generation budget per eval prompt
)


class _Seq2SeqBase(Task):
    # Both tasks build the same EncoderDecoder (vocabulary + seq2seq.num_sentinels), so both carry the section.
    config_sections = {"seq2seq": SEQ2SEQ_SECTION}
    samples_after_training = False
    decoder = False

    @classmethod
    def validate_config(cls, config) -> None:
        """The whole seq2seq section, which both tasks carry (each reads its own part of it)."""
        check = config_lib.check_range
        check(config, "seq2seq.noise_density", 0, 0.5, lo_open=True, hi_open=True)
        check(config, "seq2seq.mean_span_length", 1)
        counts = ("num_sentinels", "num_train_examples", "input_len", "target_len", "eval_examples", "max_new_tokens")
        for key in counts:
            check(config, f"seq2seq.{key}", 1)
        instructions.check_kinds(_kinds(config.seq2seq.tasks), "seq2seq.tasks")

    def __init__(self, config, tokenizer):
        self.validate_config(config)
        super().__init__(config, tokenizer)

    def build_model(self):
        return EncoderDecoder(seq2seq_model_config(self.config, self.tokenizer.vocab_size))

    def init_inputs(self) -> dict:
        ones = jnp.ones((1, 8), jnp.int32)
        return {"inputs": ones, "targets": ones, "input_segment_ids": ones}

    def _sums(self, params, batch):
        start = self.model.config.decoder_start_id
        logits, aux, metrics = apply_with_aux(
            self.model.apply,
            {"params": params},
            batch["inputs"],
            shift_right(batch["targets"], start),
            input_segment_ids=batch["input_segment_ids"],
            target_segment_ids=batch["target_segment_ids"],
        )
        weights = (batch["target_segment_ids"] != 0).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * weights)
        return jnp.sum(losses * weights), jnp.sum(weights), correct, aux, metrics

    def loss(self, params, frozen, batch, rng):
        del frozen, rng
        nll, count, correct, aux, metrics = self._sums(params, batch)
        return objective_sums(nll, count, aux, metrics, token_accuracy=correct)

    def eval_sums(self, params, frozen, batch) -> dict:
        del frozen
        nll, count, correct, _, _ = self._sums(params, batch)
        return {"loss_sum": nll, "count": count, "token_accuracy_sum": correct}


@register_task("span_corruption")
class SpanCorruptionTask(_Seq2SeqBase):
    """T5 pretraining on the corpus rows; see the module docstring."""

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        _, spans = cls.noise_spans(config)
        if spans > config.seq2seq.num_sentinels:
            raise ValueError(
                f"data.seq_len={config.data.seq_len} gives {spans} noise spans > "
                f"seq2seq.num_sentinels={config.seq2seq.num_sentinels}"
            )

    @staticmethod
    def noise_spans(config) -> tuple[int, int]:
        """(noise tokens, noise spans) of each corrupted row."""
        s = config.seq2seq
        num_noise = max(int(round(config.data.seq_len * s.noise_density)), 1)
        return num_noise, max(int(round(num_noise / s.mean_span_length)), 1)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.num_noise, spans = self.noise_spans(config)
        n = config.data.seq_len
        self.input_len, self.target_len = n - self.num_noise + spans, self.num_noise + spans + 1

    def corrupt(self, batch: dict) -> dict:
        s, pairs = self.config.seq2seq, []
        for row, seg in zip(batch["tokens"], batch["segment_ids"], strict=True):
            real = row[seg != 0]
            if len(real) < 2:  # an all-padding row (end of a finite stream): keep shapes, mask it out
                real = np.full(2, self.tokenizer.eos_id, np.int32)
            seed = np.frombuffer(real.tobytes(), np.uint32).tolist()[:64]
            rng = np.random.default_rng([self.config.train.seed, len(real), *seed])
            pairs.append(
                span_corrupt(
                    real,
                    rng,
                    noise_density=s.noise_density,
                    mean_span_length=s.mean_span_length,
                    sentinel_start=self.tokenizer.vocab_size,
                    eos_id=self.tokenizer.eos_id,
                )
            )
        return seq2seq_batch(pairs, self.input_len, self.target_len)

    def train_iterator(self, process_index: int, process_count: int):
        return _CorruptedRows(super().train_iterator(process_index, process_count), self)

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        return [self.corrupt(b) for b in super().eval_batches(process_index, process_count)]


@register_task("seq2seq")
class Seq2SeqTask(_Seq2SeqBase):
    """Generated input -> answer pairs (research.data.instructions); see the module docstring."""

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.kinds = _kinds(config.seq2seq.tasks)

    def _pair(self, example):
        tok = self.tokenizer
        return (
            np.asarray(tok.encode(example.prompt), np.int32),
            np.concatenate([tok.encode(example.response), [tok.eos_id]]).astype(np.int32),
        )

    def _examples(self, split, n):
        seed = self.config.train.seed if split == "train" else instructions.EVAL_SEED
        return [instructions.make_example(i, split=split, seed=seed, kinds=self.kinds) for i in range(n)]

    def train_iterator(self, process_index: int, process_count: int):
        s, t = self.config.seq2seq, self.config.train
        ds = grain.MapDataset.range(s.num_train_examples)[process_index::process_count].shuffle(seed=t.seed)
        ds = ds.repeat().map(
            lambda i: self._pair(instructions.make_example(int(i), split="train", seed=t.seed, kinds=self.kinds))
        )
        ds = ds.batch(t.batch_size // process_count, drop_remainder=True, batch_fn=self._collate)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

    def _collate(self, pairs):
        return seq2seq_batch(pairs, self.config.seq2seq.input_len, self.config.seq2seq.target_len)

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        per = self.config.train.batch_size
        pairs = [self._pair(e) for e in self._examples("eval", per * self.config.train.eval_batches)]
        return [self._collate(pairs[i : i + per][process_index::process_count]) for i in range(0, len(pairs), per)]

    def evaluate(self, params, frozen) -> dict:
        """Exact match of greedy generations on seq2seq.eval_examples held-out prompts."""
        del frozen
        examples = self._examples("eval", self.config.seq2seq.eval_examples)
        tok = self.tokenizer
        out = generate_seq2seq(
            self.model,
            jax.device_get(params),
            [self._pair(e)[0].tolist() for e in examples],
            max_new_tokens=self.config.seq2seq.max_new_tokens,
            stop_tokens=(tok.eos_id,),
        )
        texts = [tok.decode([t for t in row if t != tok.eos_id and t < tok.vocab_size]) for row in out]
        hits = [instructions.exact_match(e, o) for e, o in zip(examples, texts, strict=True)]
        return {"exact_match": float(np.mean(hits))}
