"""A dense retriever's encoder ("contrastive"): in-batch-negative InfoNCE on question-chunk pairs.

    python -m research.main --config experiments/rag.py ... (its "encoder" stage)
    embed = load_encoder(workdir)          # list[str] -> [n, d] float32, for retrieval.DenseRetriever

The model is research.models.encoder's EncoderModel (config.model + config.encoder;
encoder.pooling "mean" or "cls" gives the sentence embedding). Each training
batch comes from one fresh research.data.entities world (contrastive.entities
entities, seeded by (train.seed, batch index)), its fact cards chunked at one of
contrastive.words' sizes (with the matching contrastive.overlap): a row is a
question and the chunk holding its answer (research.apps.rag_data), every row's
chunk distinct, so the other rows' chunks, drawn from the same world, are true
negatives, many of them about the same entity or the same attribute. Queries and
chunks share the encoder. The loss is research.embeddings.contrastive's
(temperature, symmetric); eval batches come from worlds of another seed, so the
eval accuracy (top-1 of the batch) is on unseen entities.
"""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from research import config as config_lib
from research.apps import rag_data
from research.data.entities import make_world
from research.embeddings.contrastive import in_batch_contrastive_loss
from research.models.encoder import POOLINGS, EncoderConfig, EncoderModel
from research.tokenizers.base import NUM_SPECIAL
from research.train.step import apply_with_aux, objective_sums
from research.train.tasks import Task, register_task

CONTRASTIVE_SECTION = dict(
    entities=64,  # entities in each batch's world: its chunks are the batch's negatives
    words="4,8,12",  # chunk sizes n_c, one per batch in turn (comma-separated)
    overlap="1,2,3",  # the overlap of each size in `words`
    temperature=0.05,  # InfoNCE temperature on cosine similarities
    symmetric=True,  # also the chunk -> question direction
    eval_seed=1_000_003,  # eval worlds' seeds start here: other entities than any training batch's
)


def _ints(config, key: str) -> tuple[int, ...]:
    raw = config.contrastive[key]
    try:
        values = tuple(int(x) for x in str(raw).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"contrastive.{key}={raw!r} must be comma-separated integers") from None
    if not values:
        raise ValueError(f"contrastive.{key}={raw!r} holds no value")
    return values


def chunkings(config) -> tuple[tuple[int, int], ...]:
    """((n_c, overlap), ...) from contrastive.words and contrastive.overlap, checked."""
    words, overlaps = _ints(config, "words"), _ints(config, "overlap")
    if len(words) != len(overlaps):
        raise ValueError(f"contrastive.overlap={config.contrastive.overlap!r} needs one value per size in "
                         f"contrastive.words={config.contrastive.words!r}")  # fmt: skip
    for n_c, overlap in zip(words, overlaps, strict=True):
        if n_c <= 0:
            raise ValueError(f"contrastive.words: chunk size n_c={n_c} must be > 0")
        if not 0 <= overlap < n_c:
            raise ValueError(f"contrastive.overlap: {overlap} must be in [0, n_c={n_c})")
    return tuple(zip(words, overlaps, strict=True))


def encode_texts(tokenizer, texts: list[str], seq_len: int) -> dict:
    """[CLS] text, truncated to seq_len, zero-padded: {"tokens", "segment_ids"} int32 [n, seq_len]."""
    tokens = np.zeros((len(texts), seq_len), np.int32)
    for i, text in enumerate(texts):
        ids = [tokenizer.cls_id, *tokenizer.encode(text)][:seq_len]
        tokens[i, : len(ids)] = ids
    return {"tokens": tokens, "segment_ids": (tokens != 0).astype(np.int32)}


def make_batch(tokenizer, *, seed: int, index: int, batch_size: int, entities: int, chunking, seq_len: int) -> dict:
    """Batch `index`: up to batch_size (question, gold chunk) pairs of world (seed, index); short rows are
    padding (valid = 0) when the world has fewer distinct answer chunks."""
    n_c, overlap = chunking[index % len(chunking)]
    rng = np.random.default_rng([seed, index])
    world = make_world(entities, seed=int(rng.integers(2**31)))
    pairs = rag_data.query_passage_pairs(world, n_c, overlap, rng, batch_size)
    pad = [""] * (batch_size - len(pairs))  # a lone [CLS]: no all-padding row (attention would have no key)
    queries = encode_texts(tokenizer, [p.query for p in pairs] + pad, seq_len)
    passages = encode_texts(tokenizer, [p.passage for p in pairs] + pad, seq_len)
    valid = np.arange(batch_size) < len(pairs)
    return {
        "query_tokens": queries["tokens"],
        "query_segment_ids": queries["segment_ids"],
        "passage_tokens": passages["tokens"],
        "passage_segment_ids": passages["segment_ids"],
        "valid": valid.astype(np.int32),
    }


def encoder_config(config, vocab_size: int) -> EncoderConfig:
    """config.model + config.encoder as the EncoderModel this task trains."""
    import dataclasses

    e = config.encoder
    if e.pooling not in POOLINGS:
        raise ValueError(f"encoder.pooling={e.pooling!r}; choose one of {POOLINGS}")
    base = dataclasses.asdict(config_lib.model_config(config, vocab_size))
    return EncoderConfig(**base, post_norm=e.post_norm, pooling=e.pooling, relative_buckets=e.relative_buckets,
                         relative_max_distance=e.relative_max_distance, pad_id=0)  # fmt: skip


@register_task("contrastive")
class ContrastiveTask(Task):
    """See the module docstring."""

    config_sections = {"contrastive": CONTRASTIVE_SECTION}
    resume_must_match = ("contrastive.entities", "contrastive.words", "contrastive.overlap")
    samples_after_training = False
    decoder = False
    reports_perplexity = False

    @classmethod
    def validate_config(cls, config) -> None:
        c = config.contrastive
        config_lib.check_range(config, "contrastive.entities", 2)
        config_lib.check_range(config, "contrastive.temperature", 0, lo_open=True)
        config_lib.check_range(config, "contrastive.eval_seed", 0)
        if not isinstance(c.symmetric, bool):
            raise ValueError(f"contrastive.symmetric={c.symmetric!r} must be a bool")
        chunkings(config)
        if config.encoder.pooling not in POOLINGS:
            raise ValueError(f"encoder.pooling={config.encoder.pooling!r}; choose one of {POOLINGS}")
        if config.data.num_shards not in (-1, 1):
            raise ValueError(f"data.num_shards={config.data.num_shards}: the contrastive task builds whole batches "
                             "per process; use -1 or 1")  # fmt: skip

    def __init__(self, config, tokenizer):
        self.validate_config(config)
        super().__init__(config, tokenizer)
        self.chunking = chunkings(config)

    def build_model(self):
        return EncoderModel(encoder_config(self.config, self.tokenizer.vocab_size))

    def init_inputs(self) -> dict:
        tokens = jnp.full((1, self.config.data.seq_len), NUM_SPECIAL, jnp.int32)
        return {"tokens": tokens, "segment_ids": jnp.ones_like(tokens), "head": "embed"}

    def _batch(self, seed: int, index: int, process_index: int, process_count: int) -> dict:
        c, b = self.config, self.config.train.batch_size
        batch = make_batch(self.tokenizer, seed=seed, index=index, batch_size=b, entities=c.contrastive.entities,
                           chunking=self.chunking, seq_len=c.data.seq_len)  # fmt: skip
        rows = slice(process_index * b // process_count, (process_index + 1) * b // process_count)
        return {k: v[rows] for k, v in batch.items()}

    def train_iterator(self, process_index: int, process_count: int):
        seed = self.config.train.seed
        batches = grain.MapDataset.range(2**31 - 1).map(lambda i: self._batch(seed, int(i), process_index,
                                                                                  process_count))  # fmt: skip
        return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

    def tokens_per_step(self) -> int:
        return 2 * self.config.train.batch_size * self.config.data.seq_len

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        seed = self.config.contrastive.eval_seed
        return [self._batch(seed, i, process_index, process_count) for i in range(self.config.train.eval_batches)]

    def _sums(self, params, batch):
        def embed(prefix):
            out, _, _ = apply_with_aux(self.model.apply, {"params": params}, batch[f"{prefix}_tokens"],
                                       segment_ids=batch[f"{prefix}_segment_ids"], head="embed")  # fmt: skip
            return out

        c = self.config.contrastive
        return in_batch_contrastive_loss(embed("query"), embed("passage"), batch["valid"],
                                         temperature=c.temperature, symmetric=c.symmetric)  # fmt: skip

    def loss(self, params, frozen, batch, rng):
        del frozen, rng
        total, count, metrics = self._sums(params, batch)
        return objective_sums(total, count, None, {}, accuracy=metrics["accuracy"])

    def eval_sums(self, params, frozen, batch) -> dict:
        del frozen
        total, count, metrics = self._sums(params, batch)
        return {"loss_sum": total, "count": count, "accuracy_sum": metrics["accuracy"]}


def load_encoder(workdir, *, batch_size: int = 256):
    """A finished contrastive run as `embed(texts) -> [n, d]` float32 (the run's pooling), for DenseRetriever."""
    from research.train import checkpoint, runs

    config = runs.read_config(workdir)
    if config.train.task != "contrastive":
        raise ValueError(f"workdir={str(workdir)!r} is a train.task={config.train.task!r} run, not 'contrastive'")
    tokenizer = runs.read_tokenizer(workdir, "workdir")
    model = EncoderModel(encoder_config(config, tokenizer.vocab_size))
    seq_len = config.data.seq_len
    boxed = jax.eval_shape(lambda r: model.init(r, jnp.ones((1, seq_len), jnp.int32), head="embed")["params"],
                           jax.random.key(0))  # fmt: skip
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _unbox(boxed))
    params = checkpoint.latest_params(workdir, abstract)
    apply = jax.jit(lambda p, t, s: model.apply({"params": p}, t, segment_ids=s, head="embed"))

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            part = texts[i : i + batch_size]
            enc = encode_texts(tokenizer, part + [""] * (batch_size - len(part)), seq_len)  # one shape: one compile
            out.append(np.asarray(apply(params, enc["tokens"], enc["segment_ids"]))[: len(part)])
        return np.concatenate(out) if out else np.zeros((0, config.model.d_model), np.float32)

    return embed


def _unbox(tree):
    from research.train.sharding import strip_boxes

    return strip_boxes(tree)
