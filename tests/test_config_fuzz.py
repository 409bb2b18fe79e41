"""Fuzzed configs (hypothesis).

1. Every leaf field of the core config and of every registered task's sections, found by walking
   them (a new field is covered without editing this file, or fails here until it is): a value of
   the wrong type, and a value of the right type outside the field's range or choices, are
   refused by `validate_config` with a ValueError that names the field, before anything
   compiles. The out-of-range values come from INVALID, one rule per field; a field none of
   whose values of its type is wrong is listed in NO_INVALID_VALUE with the reason.
2. Small valid configs (every causal attention variant, MoE or not, lm or sft with each PEFT method
   and QLoRA, every tokenizer kind, norms, FFNs, positions, dtypes, accumulation) pass
   `validate_config`, and one jitted train step on them gives a finite loss and gradient.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from research.attention import list_attention
from research.data import instructions, reasoning
from research.layers.mlp import FFNS
from research.layers.norms import NORMS
from research.peft.model import METHODS
from research.tokenizers import SPECIAL_TOKENS, TOKENIZER_KINDS, ByteTokenizer, train_tokenizer
from research.tokenizers.base import NUM_SPECIAL, min_vocab_size
from research.train import tasks as tasks_lib
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.sources import to_global
from research.train.state import TrainState, learning_rate_schedule, make_optimizer, state_shapes
from research.train.step import train_step

TASKS = tasks_lib.list_tasks()

# What a task's config needs beyond task_config(name) to be valid. Validation reads no workdir.
BASE_OVERRIDES = {
    "distill": {"distill.teacher_workdir": "/runs/teacher"},
    "dpo": {"post.base_workdir": "/runs/sft"},
    "grpo": {"post.base_workdir": "/runs/sft"},
    # A rollout of rl.rollout_prompts=8 x ppo.samples_per_prompt=1 rows must split into batches.
    "ppo": {"post.base_workdir": "/runs/sft", "train.batch_size": 8},
}


def _leaves(section, prefix=""):
    for key, value in section.items():
        if isinstance(value, dict | ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(config, field):
    for key in field.split("."):
        config = config[key]
    return config


def _set(config, field, value):
    *sections, key = field.split(".")
    for section in sections:
        config = config[section]
    config[key] = value


@functools.cache
def _base(task):
    config = tasks_lib.task_config(task)
    for field, value in BASE_OVERRIDES.get(task, {}).items():
        _set(config, field, value)
    return config


def base_config(task, overrides=None):
    config = _base(task).copy_and_resolve_references()
    for field, value in (overrides or {}).items():
        _set(config, field, value)
    return config


# (task, field, default): every core field under "lm" (the core is checked the same for every task), and
# every field of every section a task declares, under each task that declares it.
FIELDS = [("lm", field, value) for field, value in _leaves(tasks_lib.task_config("lm"))] + [
    (task, f"{section}.{field}", value)
    for task in TASKS
    for section, defaults in tasks_lib.get_task(task).config_sections.items()
    for field, value in defaults.items()
]


# --- Invalid values of a field's own type. ---


def _numbers(kind, lo=None, hi=None, *, lo_open=False, hi_open=False):
    """Finite numbers of `kind` (int, or float: ints too, as the schema accepts them) in the interval."""

    def inside(v):
        return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))

    ints = st.integers(
        min_value=None if lo is None else math.floor(lo) + (1 if lo_open or lo != math.floor(lo) else 0),
        max_value=None if hi is None else math.ceil(hi) - (1 if hi_open or hi != math.ceil(hi) else 0),
    )
    if kind is int:
        return ints
    floats = st.floats(lo, hi, exclude_min=lo_open and lo is not None, exclude_max=hi_open and hi is not None,
                       allow_nan=False, allow_infinity=False)  # fmt: skip
    return st.one_of(floats, ints).filter(inside)  # the filter drops -0.0 where 0 is excluded


def below(x):
    return lambda kind, c: _numbers(kind, hi=x, hi_open=True)


def at_most(x):
    return lambda kind, c: _numbers(kind, hi=x)


def outside(lo, hi, *, lo_open=False, hi_open=False):
    """Numbers outside [lo, hi] (an open end's bound itself is outside too)."""
    return lambda kind, c: st.one_of(
        _numbers(kind, hi=lo, hi_open=not lo_open), _numbers(kind, lo=hi, lo_open=not hi_open)
    )


def not_positive_nor_auto():
    """For fields where -1 means "derived": 0 and anything below -1."""
    return lambda kind, c: st.one_of(st.just(0), st.integers(max_value=-2))


def not_in(choices):
    return lambda kind, c: st.text(max_size=12).filter(lambda s: s not in choices)


def text_from(*values):
    return lambda kind, c: st.sampled_from(values)


def ints_outside(lo, hi):
    """Ints below lo or above hi; hi may be a function of the base config."""
    return lambda kind, c: st.one_of(
        st.integers(max_value=lo - 1), st.integers(min_value=(hi(c) if callable(hi) else hi) + 1)
    )


def not_a_divisor_of(get):
    """Ints < 1, and positive ones that do not divide get(base config)."""
    return lambda kind, c: st.one_of(st.integers(max_value=0), st.integers(1, 10_000).filter(lambda x: get(c) % x))


def not_a_multiple_of(get):
    """Ints < 1, and positive ones that get(base config) does not divide."""
    return lambda kind, c: st.one_of(st.integers(max_value=0), st.integers(1, 10_000).filter(lambda x: x % get(c)))


def bad_regex():
    # An unescapable "(" with no ")" after it never compiles.
    return lambda kind, c: st.text(max_size=10).map(lambda s: "(" + s.replace(")", ""))


_WORDS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


def bad_added_tokens():
    return lambda kind, c: st.one_of(
        st.sampled_from(SPECIAL_TOKENS),  # already an id of every tokenizer
        _WORDS.map(lambda w: f"<{w}> <{w}>"),  # twice
    )


def bad_kinds():
    unknown = _WORDS.filter(lambda k: k not in instructions.KINDS and not reasoning.is_reasoning_kind(k))
    return lambda kind, c: st.one_of(
        st.just(""),
        st.just(","),
        unknown,
        st.tuples(st.sampled_from(instructions.KINDS), unknown).map(",".join),
        st.sampled_from(sorted(reasoning.TASKS)).map(lambda t: f"{t}:think=2"),  # think is a fraction
        st.sampled_from(sorted(reasoning.TASKS)).map(lambda t: f"{t}:no_such_knob=1"),
    )


def bad_rewards():
    unknown = _WORDS.map(lambda w: f"no_such_reward_{w}")
    return lambda kind, c: st.one_of(
        st.sampled_from(["", ",", " , "]),
        unknown,
        st.tuples(st.just("gold"), unknown).map(",".join),
        _WORDS.map(lambda w: f"gold:{w}"),  # a weight that is no number
    )


@dataclasses.dataclass(frozen=True)
class Bad:
    """rule(kind, base config) -> a strategy of invalid values; `given`: other fields set first, for a
    field that is only read under them (MoE options without experts are ignored, for example)."""

    rule: object
    given: dict = dataclasses.field(default_factory=dict)


MOE = {"model.moe_num_experts": 4}
INVALID = {
    # model
    "model.vocab_size": Bad(not_positive_nor_auto()),
    "model.num_layers": Bad(at_most(0)),
    "model.d_model": Bad(not_a_multiple_of(lambda c: c.model.num_heads)),
    "model.num_heads": Bad(not_a_divisor_of(lambda c: c.model.d_model)),
    "model.num_kv_heads": Bad(not_a_divisor_of(lambda c: c.model.num_heads)),
    "model.mlp_dim": Bad(not_positive_nor_auto()),
    "model.ffn": Bad(not_in(FFNS)),
    "model.norm": Bad(not_in(NORMS)),
    "model.norm_eps": Bad(at_most(0)),
    "model.position": Bad(not_in(("learned", "sinusoidal", "rope"))),  # "relative" is for encoders only
    "model.rope_theta": Bad(at_most(0)),
    "model.max_len": Bad(lambda kind, c: st.one_of(st.integers(0, c.data.seq_len - 1), st.integers(max_value=-2))),
    "model.attention": Bad(not_in(list_attention())),
    "model.attention_options.block_size": Bad(at_most(0)),
    "model.attention_options.window": Bad(at_most(0)),
    "model.attention_options.num_global": Bad(below(0)),
    "model.attention_options.stride": Bad(at_most(0)),
    "model.attention_options.rank": Bad(at_most(0)),
    "model.attention_options.num_features": Bad(at_most(0)),
    "model.attention_options.block_q": Bad(at_most(0)),
    "model.attention_options.block_kv": Bad(at_most(0)),
    "model.moe_num_experts": Bad(below(0)),
    "model.moe_top_k": Bad(ints_outside(1, lambda c: c.model.moe_num_experts), MOE),
    "model.moe_every": Bad(ints_outside(1, lambda c: c.model.num_layers), MOE),
    "model.moe_mlp_dim": Bad(not_positive_nor_auto(), MOE),
    "model.moe_capacity_factor": Bad(at_most(0), MOE),
    "model.moe_aux_weight": Bad(below(0), MOE),
    "model.moe_z_weight": Bad(below(0), MOE),
    "model.dtype": Bad(not_in(("float32", "bfloat16", "float16"))),
    "model.param_dtype": Bad(not_in(("float32", "bfloat16", "float16"))),
    # data
    "data.name": Bad(text_from("")),
    "data.text_key": Bad(text_from("")),
    "data.train_split": Bad(text_from("")),
    "data.eval_split": Bad(text_from("")),
    # Globs must name .jsonl or .txt files, and train and eval files go together.
    "data.train_files": Bad(text_from("data/*.csv", "x.jsonl,notes", "x.jsonl")),  # the last: no eval_files
    "data.eval_files": Bad(text_from("eval/*.parquet", "y.txt")),  # the last: no train_files
    "data.tokenizer": Bad(not_in(TOKENIZER_KINDS)),
    "data.vocab_size": Bad(at_most(min_vocab_size("bpe") - 1), {"data.tokenizer": "bpe"}),
    "data.added_tokens": Bad(bad_added_tokens()),
    "data.tokenizer_min_frequency": Bad(at_most(0)),
    "data.tokenizer_sample_bytes": Bad(at_most(0)),
    "data.seq_len": Bad(at_most(0)),
    "data.num_shards": Bad(not_positive_nor_auto()),
    # train
    "train.task": Bad(not_in(TASKS)),
    "train.steps": Bad(at_most(0)),
    "train.batch_size": Bad(at_most(0)),
    "train.grad_accum_steps": Bad(not_a_divisor_of(lambda c: c.train.batch_size)),
    "train.seed": Bad(below(0)),
    "train.checkpoint_every": Bad(at_most(0)),
    "train.keep_checkpoints": Bad(at_most(0)),
    "train.max_nonfinite_steps": Bad(at_most(0)),
    "train.eval_every": Bad(at_most(0)),
    "train.eval_batches": Bad(at_most(0)),
    "train.log_every": Bad(at_most(0)),
    "train.trackers": Bad(text_from("mlflow", "tensorboard,nope")),
    # optim
    "optim.learning_rate": Bad(at_most(0)),
    "optim.warmup_steps": Bad(below(0)),
    "optim.min_lr_ratio": Bad(outside(0, 1)),
    "optim.weight_decay": Bad(below(0)),
    "optim.b1": Bad(outside(0, 1, hi_open=True)),
    "optim.b2": Bad(outside(0, 1, hi_open=True)),
    "optim.eps": Bad(at_most(0)),
    "optim.clip_norm": Bad(at_most(0)),
    # mesh
    "mesh.data": Bad(not_positive_nor_auto()),
    "mesh.fsdp": Bad(not_positive_nor_auto()),
    "mesh.tensor": Bad(not_positive_nor_auto()),
    "mesh.expert": Bad(not_positive_nor_auto()),
    # sample
    "sample.num_samples": Bad(at_most(0)),
    "sample.max_new_tokens": Bad(at_most(0)),
    "sample.temperature": Bad(below(0)),
    "sample.top_k": Bad(below(0)),
    "sample.top_p": Bad(outside(0, 1, lo_open=True)),
    # quant
    "quant.format": Bad(not_in(("none", "int8", "int4", "nf4"))),
    "quant.group_size": Bad(not_positive_nor_auto()),
    "quant.targets": Bad(bad_regex()),
    "quant.exclude": Bad(bad_regex()),
    # peft
    "peft.method": Bad(not_in(METHODS)),
    "peft.rank": Bad(at_most(0)),
    "peft.alpha": Bad(at_most(0)),
    "peft.dropout": Bad(outside(0, 1, hi_open=True)),
    "peft.target": Bad(bad_regex()),
    "peft.prefix_len": Bad(at_most(0)),
    "peft.adapter_dim": Bad(at_most(0)),
    # encoder
    "encoder.pooling": Bad(not_in(("cls", "mean"))),
    "encoder.relative_buckets": Bad(below(4)),
    "encoder.type_vocab_size": Bad(below(0)),
    "encoder.relative_max_distance": Bad(lambda kind, c: st.integers(max_value=c.encoder.relative_buckets // 2)),
    # mlm, classify (mlm and classify tasks)
    "mlm.mask_rate": Bad(outside(0, 1, lo_open=True, hi_open=True)),
    "mlm.mask_token": Bad(outside(0, 1)),
    "mlm.random_token": Bad(outside(0, 1)),
    "classify.packages": Bad(text_from("", ",", "json", "json,json", "json, json")),  # two distinct ones at least
    "classify.heldout_percent": Bad(outside(0, 100, lo_open=True, hi_open=True)),
    "classify.eval_examples": Bad(at_most(0)),
    # contrastive (research/train/tasks_contrastive.py; its defaults: words "4,8,12", overlap "1,2,3")
    "contrastive.entities": Bad(below(2)),  # a batch's negatives come from other entities
    "contrastive.temperature": Bad(at_most(0)),
    "contrastive.eval_seed": Bad(below(0)),
    "contrastive.words": Bad(text_from("", "x", "4,8", "0,8,12", "4,-1,12")),  # 4,8: one size short of overlap
    "contrastive.overlap": Bad(text_from("", "a", "1,2", "4,2,3", "-1,2,3")),  # 4 >= n_c=4
    # distill
    "distill.teacher_workdir": Bad(text_from("")),
    "distill.temperature": Bad(at_most(0)),
    "distill.alpha": Bad(outside(0, 1)),
    # post, policy, preference, dpo, rl, grpo, ppo
    "post.base_workdir": Bad(text_from("")),
    "post.template": Bad(not_in(("plain", "chat"))),
    "policy.prompts": Bad(not_in(("sentiment", "instructions"))),
    "policy.instruction_tasks": Bad(bad_kinds(), {"policy.prompts": "instructions"}),
    "policy.prompt_words": Bad(at_most(0)),
    "policy.max_new_tokens": Bad(ints_outside(1, lambda c: c.data.seq_len - 1)),  # leaves room for a prompt
    "policy.min_new_tokens": Bad(ints_outside(0, lambda c: c.policy.max_new_tokens)),
    "policy.temperature": Bad(below(0)),
    "policy.top_k": Bad(below(0)),
    "policy.top_p": Bad(outside(0, 1, lo_open=True)),
    "policy.rewards": Bad(bad_rewards()),
    "policy.reward_workdir": Bad(
        text_from(""), {"policy.rewards": "gold,reward_model:0.5", "policy.reward_workdir": "/runs/rm"}
    ),
    "policy.eval_prompts": Bad(below(0)),
    "policy.eval_samples": Bad(below(0)),
    "preference.source": Bad(text_from("")),
    "preference.eval_source": Bad(
        text_from(""), {"preference.source": "/data/pairs.jsonl", "preference.eval_source": "/data/eval.jsonl"}
    ),
    "preference.num_train_pairs": Bad(at_most(0)),
    "preference.num_eval_pairs": Bad(at_most(0)),
    "preference.prompt_words": Bad(at_most(0)),
    "preference.continuation_words": Bad(at_most(0)),
    "preference.label_noise": Bad(outside(0, 0.5)),
    "preference.bt_scale": Bad(below(0)),
    "dpo.beta": Bad(at_most(0)),
    "dpo.loss_type": Bad(not_in(("sigmoid", "ipo"))),
    "dpo.label_smoothing": Bad(outside(0, 0.5, hi_open=True)),
    "rl.rollout_prompts": Bad(at_most(0)),
    "rl.num_train_prompts": Bad(lambda kind, c: st.integers(max_value=c.rl.rollout_prompts - 1)),
    "rl.epochs": Bad(at_most(0)),
    "rl.clip_eps": Bad(at_most(0)),
    "rl.kl_coef": Bad(below(0)),
    "grpo.group_size": Bad(below(2)),
    "grpo.loss_aggregation": Bad(not_in(("sequence", "token"))),
    "grpo.kl_estimator": Bad(not_in(("k1", "k2", "k3"))),
    "ppo.samples_per_prompt": Bad(at_most(0)),
    "ppo.gamma": Bad(outside(0, 1)),
    "ppo.lam": Bad(outside(0, 1)),
    "ppo.vf_coef": Bad(below(0)),
    "ppo.value_clip": Bad(below(0)),
    "ppo.entropy_coef": Bad(below(0)),
    "ppo.kl_target": Bad(at_most(0), {"ppo.adaptive_kl": True}),
    "ppo.kl_horizon": Bad(at_most(0), {"ppo.adaptive_kl": True}),
    # seq2seq (seq2seq and span_corruption tasks)
    "seq2seq.noise_density": Bad(outside(0, 0.5, lo_open=True, hi_open=True)),
    "seq2seq.mean_span_length": Bad(below(1)),
    "seq2seq.num_sentinels": Bad(at_most(0)),
    "seq2seq.tasks": Bad(bad_kinds()),
    "seq2seq.num_train_examples": Bad(at_most(0)),
    "seq2seq.input_len": Bad(at_most(0)),
    "seq2seq.target_len": Bad(at_most(0)),
    "seq2seq.eval_examples": Bad(at_most(0)),
    "seq2seq.max_new_tokens": Bad(at_most(0)),
    # sft
    "sft.tasks": Bad(bad_kinds()),
    "sft.num_train_examples": Bad(at_most(0)),
    "sft.eval_examples": Bad(below(0)),  # 0: no generation eval
    "sft.max_new_tokens": Bad(at_most(0)),
}
# Rules for one task only, where it refuses more than the others.
TASK_INVALID = {
    # RL losses divide the logits by the sampling temperature; DPO only samples for evaluation.
    ("ppo", "policy.temperature"): Bad(at_most(0)),
    ("grpo", "policy.temperature"): Bad(at_most(0)),
}
# Fields with no wrong value of their own type (bools never have one: they are listed by type).
NO_INVALID_VALUE = {
    "data.data_dir": "any directory; '' is TFDS's default",
    "train.init_from": "'' (a fresh init) or any workdir; whether it holds a checkpoint is read at start",
    "sample.prompt": "any text, the empty prompt too",
    "sft.base_workdir": "'' (a fresh random base) or any workdir, read at start",
}
TASK_NO_INVALID_VALUE = {
    ("reward", "post.base_workdir"): "a reward model needs no reference: '' trains on a fresh random body",
}


def _rule(task, field):
    return TASK_INVALID.get((task, field)) or INVALID.get(field)


def _exempt(task, field, default):
    return isinstance(default, bool) or field in NO_INVALID_VALUE or (task, field) in TASK_NO_INVALID_VALUE


VALUE_CASES = [(task, field) for task, field, default in FIELDS if not _exempt(task, field, default)]
FLOAT_CASES = [(task, field) for task, field, default in FIELDS if isinstance(default, float)]
_ids = [f"{task}:{field}" for task, field in VALUE_CASES]


def test_every_base_config_is_valid():
    """So a refusal below is the drawn value's: each task's base, and it with each rule's `given`, is valid."""
    for task in TASKS:
        tasks_lib.validate_config(base_config(task))
    for task, field in VALUE_CASES:
        if _rule(task, field) is not None:
            tasks_lib.validate_config(base_config(task, _rule(task, field).given))


def test_rules_name_existing_fields():
    """No stale rule or exemption: each names a field some task has."""
    fields = {field for _, field, _ in FIELDS}
    pairs = {(task, field) for task, field, _ in FIELDS}
    assert not set(INVALID) - fields
    assert not set(NO_INVALID_VALUE) - fields
    assert not (set(TASK_INVALID) | set(TASK_NO_INVALID_VALUE)) - pairs
    assert not set(INVALID) & set(NO_INVALID_VALUE)


def _refused(config, field):
    with pytest.raises(ValueError) as error:
        tasks_lib.validate_config(config)
    assert field in str(error.value), f"{field} is not named by: {error.value}"


@pytest.mark.parametrize("task,field", VALUE_CASES, ids=_ids)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_out_of_range_value_is_refused_naming_the_field(task, field, data):
    bad = _rule(task, field)
    assert bad is not None, (
        f"{field} has no invalid-value rule: add one to INVALID in {__file__} (with the check it tests), or say in "
        "NO_INVALID_VALUE why every value of its type is valid"
    )
    config = base_config(task, bad.given)
    value = data.draw(_invalid_values(task, field), label=field)
    _set(config, field, value)
    _refused(config, field)


@functools.cache
def _invalid_values(task, field):
    """The field's strategy, built once (building and validating a strategy costs more than a draw)."""
    bad = _rule(task, field)
    config = base_config(task, bad.given)
    return bad.rule(type(_get(config, field)), config)


_LISTS = st.lists(st.integers(), max_size=2)
_WRONG_TYPE = {
    str: st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), _LISTS),
    int: st.one_of(st.floats(allow_nan=False), st.text(max_size=5), st.booleans(), st.none(), _LISTS),
    float: st.one_of(st.text(max_size=5), st.booleans(), st.none(), _LISTS),  # an int is a valid float
    bool: st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False), st.none(), _LISTS),
}


# The schema check is the same for every task: each field once, under the first task that has it.
TYPE_CASES = list({field: (task, field) for task, field, _ in reversed(FIELDS)}.values())[::-1]


@pytest.mark.parametrize("task,field", TYPE_CASES, ids=[f"{t}:{f}" for t, f in TYPE_CASES])
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_wrong_type_is_refused_naming_the_field(task, field, data):
    # A ConfigDict refuses a wrong type on assignment (TypeError); a config read from JSON or built
    # from dicts has none of that, so the schema check must.
    raw = base_config(task).to_dict()
    value = data.draw(_WRONG_TYPE[type(_get(raw, field))], label=field)
    _set(raw, field, value)
    _refused(ml_collections.ConfigDict(raw), field)


@pytest.mark.parametrize("task,field", FLOAT_CASES, ids=[f"{t}:{f}" for t, f in FLOAT_CASES])
def test_non_finite_float_is_refused_naming_the_field(task, field):
    for value in (math.nan, math.inf, -math.inf):
        config = base_config(task)
        _set(config, field, value)
        _refused(config, field)


# --- Small valid configs train a step. ---

NON_CAUSAL = {"linformer": "pools keys over the whole row: non-causal only, and these are decoder LMs"}
CAUSAL_ATTENTION = [name for name in list_attention() if name not in NON_CAUSAL]
BLOCK = 16  # every block, window, stride and tile option: divides both drawn sequence lengths


@functools.cache
def _tokenizer(kind, vocab_size, added_tokens):
    """Learned kinds train on 400 generated instructions (~10 KB, what sft trains on): fixed text, in 0.2 s."""
    if kind == "byte":
        base = ByteTokenizer()
    else:
        examples = [instructions.make_example(i, split="train", seed=0) for i in range(400)]
        texts = [f"{e.prompt}\n{e.response}" for e in examples]
        base = train_tokenizer(kind, texts, vocab_size=vocab_size, min_frequency=2)
    return base.with_added_tokens(added_tokens.split())


@st.composite
def small_configs(draw):
    """A valid config of a model that compiles in seconds: lm, or sft with each PEFT method."""
    task = draw(st.sampled_from(["lm", "sft"]))
    method = draw(st.sampled_from(METHODS)) if task == "sft" else "none"
    c = tasks_lib.task_config(task)
    position = draw(st.sampled_from(["learned", "sinusoidal", "rope"]))
    d_model = draw(st.sampled_from([32, 48, 64]))
    heads = draw(
        st.sampled_from([h for h in (1, 2, 4) if d_model % h == 0 and (position != "rope" or d_model // h % 2 == 0)])
    )
    layers = draw(st.integers(1, 2))
    experts = draw(st.sampled_from([0, 4]))
    ffn = draw(st.sampled_from(FFNS))
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0])),
        mlp_dim=draw(st.sampled_from([-1, 64])),
        ffn=ffn,
        norm=draw(st.sampled_from(NORMS)),
        position=position,
        tie_embeddings=draw(st.booleans()),
        use_bias=draw(st.booleans()),
        # Prefix tuning passes its keys through an explicit mask, which only dense attention takes.
        attention="dense" if method == "prefix" else draw(st.sampled_from(CAUSAL_ATTENTION)),
        moe_num_experts=experts,
        moe_top_k=(top_k := draw(st.sampled_from([1, 2]))),
        moe_renormalize=top_k > 1,  # top-1 takes the Switch gate (a renormalized one is always 1)
        moe_every=draw(st.integers(1, layers)),
        moe_dropless=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "bfloat16"])),
    )
    c.model.attention_options.update(
        block_size=BLOCK, window=BLOCK, stride=BLOCK, num_features=BLOCK, block_q=BLOCK, block_kv=BLOCK
    )
    kind = draw(st.sampled_from(TOKENIZER_KINDS))
    c.data.update(
        seq_len=draw(st.sampled_from([32, 64])),
        tokenizer=kind,
        vocab_size=max(min_vocab_size(kind), 300) if kind != "byte" else c.data.vocab_size,
        added_tokens=draw(st.sampled_from(["", "<think> </think>"])),
    )
    batch = draw(st.integers(2, 4))
    c.train.update(
        steps=10, batch_size=batch, grad_accum_steps=draw(st.sampled_from([g for g in (1, 2) if batch % g == 0]))
    )
    c.optim.update(warmup_steps=0)  # a real update on the first step
    c.peft.update(
        method=method,
        rank=draw(st.integers(1, 4)),
        dropout=draw(st.sampled_from([0.0, 0.1])),
        prefix_len=draw(st.integers(1, 4)),
        adapter_dim=draw(st.integers(1, 8)),
    )
    if method == "lora":  # QLoRA: a quantized frozen base
        c.quant.update(format=draw(st.sampled_from(["none", "int8", "nf4"])), group_size=BLOCK)
    return c


def _batch(config, vocab_size, seed=0):
    """Rows of two packed segments and some padding; sft's loss mask covers each segment's second half."""
    rows, n = config.train.batch_size, config.data.seq_len
    rng = np.random.default_rng(seed)
    seg, pos, mask = (np.zeros((rows, n), np.int32) for _ in range(3))
    for r in range(rows):
        real = n - int(rng.integers(0, n // 4))
        first = int(rng.integers(2, real - 1))
        for s, (start, stop) in enumerate([(0, first), (first, real)], start=1):
            seg[r, start:stop] = s
            pos[r, start:stop] = np.arange(stop - start)
            mask[r, (start + stop) // 2 : stop] = 1
    tokens = np.where(seg > 0, rng.integers(NUM_SPECIAL, vocab_size, (rows, n)), 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": mask}


# XLA:CPU compiles about twice as fast without its optimisations (as in tests/train/test_promises.py); each
# program here runs once.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _one_train_step(config, task, batch):
    """One jitted step on one device, built from the pieces research.train.loop uses (state_shapes'
    shardings, TrainState.create under the task's init, train_step with the task's loss); its two
    programs are compiled with FAST_COMPILE, which create_train_state does not take."""
    t = config.train
    tx = make_optimizer(config.optim, t.steps)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    rng = jax.random.key(t.seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        _, shardings = state_shapes(task.model, tx, mesh, init_fn=task.init_params)

        def init(r):
            return nn.unbox(TrainState.create(apply_fn=task.model.apply, params=task.init_params(r), tx=tx))

        state = jax.jit(init, out_shardings=shardings).lower(rng).compile(FAST_COMPILE)(rng)
        frozen = task.frozen_params(mesh)
        state = state.replace(params=task.initial_params(state.params, frozen))
        step = functools.partial(
            train_step,
            grad_accum_steps=t.grad_accum_steps,
            learning_rate_fn=learning_rate_schedule(config.optim, t.steps),
            loss_fn=task.loss,
            seed=t.seed,
        )
        batch = to_global(batch, mesh)
        _, metrics = jax.jit(step).lower(state, batch, frozen).compile(FAST_COMPILE)(state, batch, frozen)
    return jax.device_get(metrics)


# Each example compiles an init and a train step (and, for PEFT, the base's init): 10-25 s on this project's
# 2-core machine, so few examples, no deadline, and no shrinking (minutes of recompiling): a failure prints
# its config whole, and hypothesis's database replays it on the next run. The first run of this test found
# performer attention's NaN gradient at padding queries (tests/attention/test_variants.py).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=3, deadline=None, phases=NO_SHRINK, suppress_health_check=[HealthCheck.too_slow])
@given(config=small_configs())
def test_small_valid_configs_pass_validation_and_train_a_step(config):
    tasks_lib.validate_config(config)
    d = config.data
    tokenizer = _tokenizer(d.tokenizer, d.vocab_size, d.added_tokens)
    task = tasks_lib.get_task(config.train.task)(config, tokenizer)
    metrics = _one_train_step(config, task, _batch(config, tokenizer.vocab_size))
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0, metrics
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0, metrics
