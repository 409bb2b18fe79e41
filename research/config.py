"""The core config schema, its validation, and the `get_config(arg)` helpers for experiment files.

The core is what every run has: the model (and its encoder variants), data,
training, optimizer, mesh, sampling, and how the model is adapted (PEFT,
quantization). A task's own options live in sections the task declares
(research/train/tasks.py: `Task.config_sections`); `task_config(name)` there
returns this core plus them, and `validate_config` checks both. An experiment
file starts from one of those and changes values; it may not invent keys, so a
typo fails, naming the key, before anything compiles.

This module imports no task: tasks import it.
"""

import dataclasses
import functools
import inspect
import math

import ml_collections

from research.attention import get_attention, list_attention
from research.attention.sparse import check_attention_options
from research.data.files import check_patterns
from research.layers.mlp import FFNS
from research.layers.moe import check_config as check_moe_config
from research.layers.norms import NORMS
from research.layers.position import POSITIONS
from research.models import ModelConfig
from research.models.encoder import POOLINGS
from research.peft.model import PeftSpec
from research.quant.config import validate_quant
from research.tokenizers import TOKENIZER_KINDS
from research.tokenizers.base import check_added_tokens, min_vocab_size

DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        vocab_size=-1,  # -1: the tokenizer's vocabulary size
        num_layers=6,
        d_model=384,
        num_heads=6,
        num_kv_heads=6,
        mlp_dim=-1,  # -1: 4 * d_model
        ffn="gelu",
        norm="layernorm",
        norm_eps=1e-6,
        position="rope",
        rope_theta=10_000.0,
        max_len=-1,  # -1: data.seq_len
        tie_embeddings=True,
        scale_tied_logits=True,  # tied logits times d_model**-0.5; False for GPT-2 checkpoints
        use_bias=False,  # biases in attention and MLP projections (GPT-2, BERT)
        attention="dense",  # a name in research.attention's registry
        # Every variant's knobs; a variant reads only those it declares (research.attention.registry).
        attention_options=dict(
            block_size=128,  # blockwise, block_sparse: tokens per block; performer: causal chunk length
            window=128,  # sliding: each query sees this many most recent keys, itself included
            num_global=1,  # block_sparse: leading blocks every query sees and that see everything
            stride=64,  # strided: a query sees its own stride-long chunk and the last key of every chunk
            rank=64,  # linformer (non-causal): keys/values mean-pooled to this many rows
            num_features=128,  # performer: positive orthogonal random features
            block_q=128,  # flash: query tile; must divide seq_len (shrunk to it when longer)
            block_kv=128,  # flash: key/value tile; must divide seq_len (also the CPU fallback's block_size)
            interpret=False,  # flash: run the Pallas GPU kernel in interpret mode (slow; CPU tests)
        ),
        # Mixture of Experts (research.layers.moe): 0 experts = dense FFN in every block.
        moe_num_experts=0,
        moe_top_k=2,  # experts per token (1: Switch, 2: Mixtral)
        moe_every=2,  # blocks i with (i + 1) % moe_every == 0 are MoE (2: every other block)
        moe_mlp_dim=-1,  # each expert's hidden width; -1: model.mlp_dim
        moe_capacity_factor=1.25,  # slots per expert = factor * tokens * top_k / experts (per batch row)
        moe_dropless=False,  # True: grouped matmul (ragged_dot), no capacity, nothing dropped
        moe_renormalize=True,  # gates = softmax over the top-k logits; False: raw router probabilities
        moe_aux_weight=0.01,  # Switch load-balancing loss weight
        moe_z_weight=1e-3,  # router z-loss weight
        dtype="float32",
        param_dtype="float32",
    )
    c.data = dict(
        name="python_stdlib",  # our generated TFDS dataset, any TFDS text dataset, or hf:PATH / hf:REPO[:CONFIG]
        data_dir="",  # "" = TFDS default (~/tensorflow_datasets)
        text_key="text",
        train_split="train",
        eval_split="validation",
        # Your own files instead of a TFDS dataset: comma-separated globs of .jsonl (a document per line,
        # its text under text_key) or .txt (a document per file), local or gs://; set both (research/data/files.py).
        train_files="",
        eval_files="",
        # byte | char | word | bpe | wordpiece | unigram (research.tokenizers), or pretrained: the tokenizer.json
        # of the Hugging Face model the run starts from (set by itself when it starts from one).
        tokenizer="byte",
        vocab_size=1024,  # learned tokenizers only; byte's is fixed
        added_tokens="",  # space-separated strings made one id each, after the vocabulary ("<think> </think>")
        tokenizer_min_frequency=2,  # word/bpe/wordpiece: rarer pieces stay out of the vocabulary
        tokenizer_sample_bytes=4_000_000,  # the tokenizer trains on this many bytes from the train split's start
        seq_len=256,
        num_shards=-1,  # -1: one per process. Fix it to make runs with different process counts see the same batches.
    )
    c.train = dict(
        task="lm",  # the objective: a name in research.train.tasks' registry (lm, mlm, sft, ...)
        init_from="",  # a workdir whose newest checkpoint initialises the matching parameters
        steps=1000,
        batch_size=16,
        grad_accum_steps=1,
        seed=0,
        checkpoint_every=200,
        keep_checkpoints=3,
        # A step whose loss or gradient norm is not finite changes nothing (research.train.step);
        # this many of them in a row stop the run.
        max_nonfinite_steps=5,
        async_checkpointing=True,
        eval_every=200,
        eval_batches=8,
        log_every=10,
        trackers="tensorboard",  # besides metrics.jsonl: comma-separated, of tensorboard, wandb ("" for none)
    )
    c.optim = dict(
        learning_rate=1e-3,
        warmup_steps=100,
        min_lr_ratio=0.1,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        clip_norm=1.0,
    )
    # -1: whatever the other axes leave. `expert` shards MoE experts and is also a data axis elsewhere.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, expert=1)
    c.sample = dict(prompt="def ", num_samples=4, max_new_tokens=128, temperature=0.8, top_k=0, top_p=0.95)
    # Weight-only quantization (research.quant): of a frozen base (QLoRA) and for inference.
    c.quant = dict(
        format="none",  # none | int8 | int4 | nf4
        group_size=64,  # rows of a weight's contraction axis per scale; -1: one scale per output channel
        double_quant=False,  # quantize the scales too (int8 in blocks of 256), as QLoRA does for NF4
        targets=".*",  # regex over parameter paths ('block_0/attn/query') of the weights to quantize
        exclude="embed|router",  # regex of paths kept in float (embeddings, MoE routers)
    )
    # How much of the model a fine-tuning task trains (research.peft); the base comes from the task.
    c.peft = dict(
        method="none",  # none (every parameter) | lora | prefix | adapter (research.peft)
        rank=8,  # lora: r
        alpha=16.0,  # lora: delta W = alpha / r * A @ B
        dropout=0.0,  # lora: dropout on the branch's input features
        target=r"attn/(query|key|value|out)$",  # lora: regex over parameter paths ('block_0/attn/query')
        prefix_len=8,  # prefix: learned key/value rows per attention layer
        adapter_dim=16,  # adapter: bottleneck width
    )
    # Encoder / encoder-decoder models (research.models.encoder*).
    c.encoder = dict(
        post_norm=False,  # BERT's norm(x + f(x)) blocks and normed embeddings; False: pre-norm + final norm
        type_vocab_size=0,  # BERT's token-type (segment A/B) embeddings, all rows type 0 here; 0: none
        pooling="cls",  # sentence embeddings: cls | mean (over non-padding tokens)
        relative_buckets=32,  # model.position='relative' (T5 bias): buckets, half per direction in encoders
        relative_max_distance=128,  # offsets at least this far apart share the last bucket
    )
    return c


def swiglu_mlp_dim(d_model: int) -> int:
    """8/3 * d_model rounded up to a multiple of 64: SwiGLU's three matrices then hold
    as many parameters as a GELU MLP's two of width 4 * d_model."""
    return (8 * d_model // 3 + 63) // 64 * 64


def config_keys(config, prefix: str = "") -> list[str]:
    """Every leaf of a ConfigDict as a dotted key, in order: ['data.tokenizer', ..., 'train.steps', ...]."""
    keys = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += config_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def parse_arg(arg: str | None, **defaults):
    """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True), typed like `defaults`.

    The part after ':' in `--config experiments/x.py:a=1,flag` reaches get_config as `arg`.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            if sep and value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key!r} is a bool, got {value!r}")
            out[key] = (not sep) or value.lower() in ("true", "1")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"config argument {key!r} must be {kind.__name__}, got {value!r}") from None
    return out


@functools.cache
def _core_schema() -> dict:
    """default_config() as nested plain dicts, built once (validate runs per config; a ConfigDict is slow
    to build). Read-only: nothing may change it."""
    return default_config().to_dict()


def _check_schema(config, schema, prefix=""):
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ValueError(f"unknown config key {path!r}; known keys here: {sorted(schema.keys())}")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"config key {path!r} must be a section, got {value!r}")
            _check_schema(value, expected, prefix=path + ".")
        elif isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool):
            continue
        elif type(value) is not type(expected):
            raise ValueError(
                f"config key {path!r} must be {type(expected).__name__}, got {type(value).__name__} {value!r}"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key {path!r} must be a finite number, got {value!r}")


def _choice(path, value, allowed):
    if value not in allowed:
        raise ValueError(f"{path}={value!r}; choose one of {sorted(allowed)}")


def _get(config, path):
    for key in path.split("."):
        config = config[key]
    return config


def _positive(config, *paths):
    for path in paths:
        if not _get(config, path) > 0:
            raise ValueError(f"{path} must be > 0, got {_get(config, path)}")


def _positive_or_auto(config, *paths):
    """Fields where -1 means "derived from another field" (model.mlp_dim, data.num_shards, ...)."""
    for path in paths:
        value = _get(config, path)
        if value != -1 and not value > 0:
            raise ValueError(f"{path} must be > 0 or -1 (derived), got {value}")


def _non_empty(config, *paths):
    for path in paths:
        if not _get(config, path):
            raise ValueError(f"{path} must be a non-empty string")


def check_range(config, path, lo=None, hi=None, *, lo_open=False, hi_open=False) -> None:
    """Raises ValueError naming `path` (dotted, e.g. "optim.b1") unless lo <= value <= hi.

    lo_open / hi_open make that end exclusive; None leaves it unbounded. For the
    tasks' sections too (research/train/tasks*.py).
    """
    value = _get(config, path)
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    if above and below:
        return
    if hi is None:
        want = f"{'>' if lo_open else '>='} {lo}"
    elif lo is None:
        want = f"{'<' if hi_open else '<='} {hi}"
    else:
        want = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{path}={value!r} must be {want}")


def validate(config, sections=None) -> None:
    """Raises ValueError naming the first bad key of the core. Cheap: runs before any compilation.

    sections: {name: defaults} of the sections the run's task declares, which the
    config may (and the task's config does) carry beside the core; their values
    are the task's to check (research.train.tasks.validate_config does both).
    """
    _check_schema(config, {**_core_schema(), **(sections or {})})
    m, d, t = config.model, config.data, config.train
    _positive(
        config,
        "model.num_layers",
        "model.d_model",
        "model.num_heads",
        "model.num_kv_heads",
        "data.seq_len",
        "train.steps",
        "train.batch_size",
        "train.grad_accum_steps",
        "train.checkpoint_every",
        "train.max_nonfinite_steps",
        "train.eval_every",
        "train.log_every",
        "train.keep_checkpoints",
        "train.eval_batches",
        "model.norm_eps",
        "model.rope_theta",
        "optim.learning_rate",
        "optim.eps",
        "optim.clip_norm",
        "sample.num_samples",
        "sample.max_new_tokens",
    )
    _positive_or_auto(config, "model.vocab_size", "model.mlp_dim", "model.max_len", "data.num_shards")
    check_range(config, "train.seed", 0)
    check_range(config, "optim.warmup_steps", 0)
    check_range(config, "optim.min_lr_ratio", 0, 1)
    check_range(config, "optim.weight_decay", 0)
    check_range(config, "optim.b1", 0, 1, hi_open=True)
    check_range(config, "optim.b2", 0, 1, hi_open=True)
    check_range(config, "sample.temperature", 0)  # 0: greedy
    check_range(config, "sample.top_k", 0)  # 0: off
    check_range(config, "sample.top_p", 0, 1, lo_open=True)
    _non_empty(config, "data.name", "data.text_key", "data.train_split", "data.eval_split")
    train_files = check_patterns(config.data.train_files, "data.train_files")
    eval_files = check_patterns(config.data.eval_files, "data.eval_files")
    if bool(train_files) != bool(eval_files):
        raise ValueError(
            f"data.train_files={config.data.train_files!r} and data.eval_files={config.data.eval_files!r}: "
            "set both (your own files) or neither (the TFDS dataset data.name)"
        )
    if m.d_model % m.num_heads:
        raise ValueError(f"model.num_heads={m.num_heads} must divide model.d_model={m.d_model}")
    if m.num_heads % m.num_kv_heads:
        raise ValueError(f"model.num_heads={m.num_heads} must be a multiple of model.num_kv_heads={m.num_kv_heads}")
    if m.position == "rope" and (m.d_model // m.num_heads) % 2:
        raise ValueError(f"model.position='rope' needs an even head dim, got {m.d_model // m.num_heads}")
    _choice("model.ffn", m.ffn, FFNS)
    _choice("model.norm", m.norm, NORMS)
    _choice("model.position", m.position, POSITIONS)
    _choice("model.attention", m.attention, list_attention())
    if m.position == "relative" and "bias" not in inspect.signature(get_attention(m.attention)).parameters:
        raise ValueError(
            f"model.position='relative' adds a bias to the attention logits, which model.attention={m.attention!r} "
            "does not take; use 'dense'"
        )
    check_attention_options(m.attention, m.attention_options, d.seq_len)
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.param_dtype", m.param_dtype, DTYPES)
    _choice("data.tokenizer", d.tokenizer, (*TOKENIZER_KINDS, "pretrained"))
    _positive(config, "data.vocab_size", "data.tokenizer_min_frequency", "data.tokenizer_sample_bytes")
    # byte's vocabulary is fixed; a pretrained one is the source model's
    if d.tokenizer not in ("byte", "pretrained") and d.vocab_size < min_vocab_size(d.tokenizer):
        raise ValueError(
            f"data.vocab_size={d.vocab_size} is too small for data.tokenizer={d.tokenizer!r}: "
            f"it needs at least {min_vocab_size(d.tokenizer)}"
        )
    check_added_tokens(d.added_tokens.split(), "data.added_tokens")
    if 0 <= m.max_len < d.seq_len:
        raise ValueError(f"model.max_len={m.max_len} is shorter than data.seq_len={d.seq_len}")
    if t.batch_size % t.grad_accum_steps:
        raise ValueError(f"train.grad_accum_steps={t.grad_accum_steps} must divide train.batch_size={t.batch_size}")
    for axis in ("data", "fsdp", "tensor", "expert"):
        if config.mesh[axis] == 0 or config.mesh[axis] < -1:
            raise ValueError(f"mesh.{axis} must be a positive size or -1, got {config.mesh[axis]}")
    check_moe_config(m, config.mesh)
    validate_quant(config)
    PeftSpec.from_config(config.peft)
    e = config.encoder
    _choice("encoder.pooling", e.pooling, POOLINGS)
    # Encoders split the buckets in half per direction; each half needs an exact bucket and a log-spaced one.
    check_range(config, "encoder.relative_buckets", 4)
    if "type_vocab_size" in e:  # configs saved before the key
        check_range(config, "encoder.type_vocab_size", 0)
    if e.relative_max_distance <= e.relative_buckets // 2:
        raise ValueError(
            f"encoder.relative_max_distance={e.relative_max_distance} must exceed half of "
            f"encoder.relative_buckets={e.relative_buckets}: the exactly bucketed offsets come below it"
        )


def model_config(config, vocab_size: int) -> ModelConfig:
    """The ModelConfig a validated config describes, with -1 defaults resolved."""
    m = dict(config.model)
    if m["vocab_size"] == -1:
        m["vocab_size"] = vocab_size
    elif m["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={m['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    if m["mlp_dim"] == -1:
        m["mlp_dim"] = 4 * m["d_model"]
    if m["max_len"] == -1:
        m["max_len"] = config.data.seq_len
    m["attention_options"] = tuple(sorted(m["attention_options"].items()))  # hashable, for the frozen dataclass
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in m.items() if k in fields})
