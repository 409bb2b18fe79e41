"""Training objectives. The loop is one loop; what varies is a `Task`.

A task says which model to build, which batches to feed it and which loss to
minimise: next-token LM, masked LM, classification, seq2seq, SFT, distillation,
reward modelling, DPO, PPO, GRPO are subclasses registered by name and picked by
`config.train.task`. A task owns its options: it declares its config sections
(`config_sections`, e.g. {"mlm": {...defaults}}) and checks them
(`validate_config`); `task_config(name)` is the core config plus those sections,
and `validate_config(config)` checks a whole config, core and task.

Conventions every task follows:
- `loss` returns sums, not means: (objective summed over the batch's target
  units, number of units, {metric: value * units}). The train step divides by
  the whole batch's units, so gradient accumulation changes memory, not maths.
- `frozen` is a pytree the loss reads but nobody trains or checkpoints (a PEFT
  or quantized base, a distillation teacher); it is rebuilt from the run's
  config on resume.
- Modules add regularisers without plumbing: `self.sow("losses", name, x)`
  (already weighted) joins the objective and `self.sow("metrics", name, x)`
  is logged, both through `research.train.step.apply_with_aux`.
- The loop asks the task's `batch_source` for every step's batch, passing the
  current train state: the default wraps the checkpointable iterator, an RL
  task's samples from the current policy (research/post/rollout.py).
"""

import copy
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research import config as config_lib
from research.data import DataSpec, make_eval_batches, make_train_iterator
from research.models import DecoderLM
from research.train import checkpoint
from research.train.metrics import tracker_names
from research.train.sources import IteratorSource
from research.train.step import lm_loss, lm_loss_sums

_TASKS: dict[str, type["Task"]] = {}

# The built-in tasks beyond "lm", by module. Imported on first lookup: they
# subclass Task, so this module can't import them at its top.
_TASK_MODULES = {
    "mlm": "research.train.tasks_encoder",
    "classify": "research.train.tasks_encoder",
    "contrastive": "research.train.tasks_contrastive",
    "span_corruption": "research.train.tasks_seq2seq",
    "seq2seq": "research.train.tasks_seq2seq",
    "sft": "research.train.tasks_sft",
    "distill": "research.distill.task",
    "reward": "research.post.tasks_reward",
    "dpo": "research.post.tasks_dpo",
    "ppo": "research.post.tasks_ppo",
    "grpo": "research.post.tasks_grpo",
}


def register_task(name: str):
    """Class decorator: `@register_task("mlm")` makes a Task subclass selectable as `train.task`."""

    def wrap(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def list_tasks() -> list[str]:
    for module in sorted(set(_TASK_MODULES.values())):
        importlib.import_module(module)
    return sorted(_TASKS)


def get_task(name: str) -> type["Task"]:
    if name not in _TASKS and name in _TASK_MODULES:
        importlib.import_module(_TASK_MODULES[name])
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"train.task={name!r} is not a registered task; choose one of {list_tasks()}") from None


def task_config(name: str = "lm") -> ml_collections.ConfigDict:
    """The core config (research.config.default_config) plus the sections task `name` declares, train.task = name."""
    return with_task(config_lib.default_config(), name)


def with_task(config, name: str) -> ml_collections.ConfigDict:
    """A copy of `config` set to train task `name`, with that task's sections added where missing.

    For experiments whose stages or sweep entries share one base config across tasks.
    """
    task = get_task(name)
    config = config.copy_and_resolve_references()
    for section, defaults in task.config_sections.items():
        if section not in config:
            config[section] = copy.deepcopy(defaults)
    config.train.task = name
    return config


def all_config_sections() -> dict[str, dict]:
    """{section: defaults} over every registered task. Tasks that share a section share its defaults."""
    sections: dict[str, dict] = {}
    for name in list_tasks():
        for section, defaults in _TASKS[name].config_sections.items():
            if sections.setdefault(section, defaults) != defaults:
                raise ValueError(f"tasks declare config section {section!r} with different defaults")
    return sections


def validate_config(config) -> None:
    """Raises ValueError naming the first bad key: the core (research.config.validate), then the task's sections.

    A config may carry the sections of other tasks (a sweep over train.task shares one base config); a
    section no task declares is an unknown key. Cheap: runs before anything compiles or is written.
    """
    name = config.train.get("task", "lm")
    if not isinstance(name, str):
        raise ValueError(f"config key 'train.task' must be str, got {type(name).__name__} {name!r}")
    task = get_task(name)
    missing = sorted(set(task.config_sections) - set(config))
    if missing:
        raise ValueError(
            f"train.task={task.name!r} needs the config sections {missing}: start from "
            f"research.train.tasks.task_config({task.name!r}) or with_task(config, {task.name!r})"
        )
    config_lib.validate(config, sections=all_config_sections())
    tracker_names(config.train.trackers)
    if task.decoder and config.model.position == "relative":
        raise ValueError(
            f"model.position='relative' (T5 bias) is for encoder and encoder-decoder models; train.task="
            f"{task.name!r} trains a decoder LM"
        )
    task.validate_config(config)


def data_spec(config) -> DataSpec:
    d = config.data
    num_shards = jax.process_count() if d.num_shards == -1 else d.num_shards
    return DataSpec(
        name=d.name,
        data_dir=d.data_dir or None,
        text_key=d.text_key,
        train_split=d.train_split,
        eval_split=d.eval_split,
        train_files=d.get("train_files", ""),  # .get: configs read from workdirs written before these keys
        eval_files=d.get("eval_files", ""),
        seq_len=d.seq_len,
        global_batch_size=config.train.batch_size,
        num_shards=num_shards,
        seed=config.train.seed,
    )


@register_task("lm")
class Task:
    """Next-token language modelling on packed text ("lm"): the base every task refines."""

    name = "lm"
    # {section: defaults} of the task's own options, beside the core config (see task_config).
    config_sections: dict[str, dict] = {}
    # Config keys (besides RESUME_MUST_MATCH in research/train/checkpoint.py) a resumed
    # run must share with the run that wrote the workdir, e.g. ("peft", "sft.base_workdir").
    resume_must_match: tuple[str, ...] = ()
    # Whether `research.sample` can generate from the workdir (a decoder LM run).
    samples_after_training: bool = True
    # What research/train/runs.py needs to load a run of this task as a model: whether it trains a
    # DecoderLM, whether it adapts a frozen base (config.peft, config.quant apply), which heads
    # the model's parameters include.
    decoder: bool = True
    adapts_base: bool = False
    # Whether the eval loss is a per-token NLL, whose exp (perplexity) the eval reports.
    reports_perplexity: bool = True
    model_heads: tuple[str, ...] = ("logits",)

    @classmethod
    def base_workdir(cls, config) -> str:
        """The run whose model this task's run adapts ("" for none, or a fresh random base)."""
        del config
        return ""

    @classmethod
    def tokenizer_sources(cls, config) -> tuple[str, ...]:
        """The runs whose tokenizer this run may share, first match wins (research.train.loop): the base
        and train.init_from; a task reading another model's logits (a distillation teacher) adds it."""
        return tuple(filter(None, (cls.base_workdir(config), config.train.init_from)))

    @classmethod
    def validate_config(cls, config) -> None:
        """Checks the task's own sections (the core is checked already); raises ValueError naming the key."""
        del config

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.model = self.build_model()

    # --- What to train. ---
    def build_model(self) -> nn.Module:
        return DecoderLM(config_lib.model_config(self.config, self.tokenizer.vocab_size))

    def init_inputs(self) -> dict:
        """Keyword inputs `model.init` traces with (shapes only)."""
        # The full row length: a variant's window or block must divide what init traces.
        return {"tokens": jnp.zeros((1, self.config.data.seq_len), jnp.int32)}

    def init_params(self, rng):
        """Boxed (logically partitioned) parameters; run under jax.eval_shape for shapes only."""
        return self.model.init(rng, **self.init_inputs())["params"]

    def frozen_params(self, mesh):
        """Inputs of the loss that are never trained nor checkpointed; None for plain training."""
        del mesh
        return None

    def for_decoding(self, params, frozen):
        """(model, params) of the trained decoder, fastest to decode or score with (research.decode,
        bits per byte): a task that adapts a frozen base merges or wraps it (AdaptedModel.for_decoding)."""
        del frozen
        return self.model, params

    def initial_params(self, params, frozen):
        """A fresh run's params before its first step: `params` (the init) with train.init_from's matching
        leaves loaded. Tasks that start from another model (an RL policy from its reference) override it."""
        del frozen
        init_from = self.config.train.init_from
        return checkpoint.init_from(init_from, params) if init_from else params

    # --- On what. ---
    def train_iterator(self, process_index: int, process_count: int):
        """Checkpointable iterator over this process's rows of each global batch (numpy dicts)."""
        return make_train_iterator(
            data_spec(self.config), self.tokenizer, process_index=process_index, process_count=process_count
        )

    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, for the logged tokens_per_sec."""
        return self.config.train.batch_size * self.config.data.seq_len

    def batch_source(self, train_iterator, mesh):
        """What the loop asks for each step's batch (research.train.sources); the default reads the iterator."""
        return IteratorSource(train_iterator, mesh)

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        return make_eval_batches(
            data_spec(self.config),
            self.tokenizer,
            num_batches=self.config.train.eval_batches,
            process_index=process_index,
            process_count=process_count,
        )

    # --- Towards what. ---
    def loss(self, params, frozen, batch, rng):
        """(objective sum, target count, {metric: sum}); see the module docstring."""
        return lm_loss(params, frozen, batch, rng, apply_fn=self.model.apply)

    def eval_sums(self, params, frozen, batch) -> dict:
        """{"loss_sum", "count"}: the eval loss is the plain NLL, without regularisers."""
        del frozen
        loss_sum, count = lm_loss_sums(params, self.model.apply, batch)
        return {"loss_sum": loss_sum, "count": count}

    def evaluate(self, params, frozen) -> dict:
        """Extra eval metrics computed on the host (accuracy, exact match...); {} for LM."""
        del params, frozen
        return {}
