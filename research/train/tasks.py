"""Training objectives. The loop is one loop; what varies is a `Task`.

A task says which model to build, which batches to feed it and which loss to
minimise: next-token LM, masked LM, classification, seq2seq, SFT, distillation
are subclasses registered by name and picked by `config.train.task`. Options of
a task live in its own config section (`config.mlm`, `config.peft`, ...).

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
"""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import config as config_lib
from research.data import DataSpec, make_eval_batches, make_train_iterator
from research.models import DecoderLM
from research.train.step import lm_loss, lm_loss_sums

_TASKS: dict[str, type["Task"]] = {}

# The built-in tasks beyond "lm", by module. Imported on first lookup: they
# subclass Task, so this module can't import them at its top.
_TASK_MODULES = {
    "mlm": "research.train.tasks_encoder",
    "classify": "research.train.tasks_encoder",
    "span_corruption": "research.train.tasks_seq2seq",
    "seq2seq": "research.train.tasks_seq2seq",
    "sft": "research.train.tasks_sft",
    "distill": "research.distill.task",
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


def data_spec(config) -> DataSpec:
    d = config.data
    num_shards = jax.process_count() if d.num_shards == -1 else d.num_shards
    return DataSpec(
        name=d.name,
        data_dir=d.data_dir or None,
        text_key=d.text_key,
        train_split=d.train_split,
        eval_split=d.eval_split,
        seq_len=d.seq_len,
        global_batch_size=config.train.batch_size,
        num_shards=num_shards,
        seed=config.train.seed,
    )


@register_task("lm")
class Task:
    """Next-token language modelling on packed text ("lm"): the base every task refines."""

    name = "lm"
    # Config keys (besides RESUME_MUST_MATCH in research/train/checkpoint.py) a resumed
    # run must share with the run that wrote the workdir, e.g. ("peft", "sft.base_workdir").
    resume_must_match: tuple[str, ...] = ()
    # Whether `research.sample` can generate from the workdir's checkpoint alone (a
    # decoder LM whose whole parameters are in the train state).
    samples_after_training: bool = True

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

    # --- On what. ---
    def train_iterator(self, process_index: int, process_count: int):
        """Checkpointable iterator over this process's rows of each global batch (numpy dicts)."""
        return make_train_iterator(
            data_spec(self.config), self.tokenizer, process_index=process_index, process_count=process_count
        )

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
