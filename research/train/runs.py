"""A finished (or running) decoder run as a model: one loader for every task, evaluator and CLI.

    run = load_run("workdirs/sft")                 # config.json + tokenizer.json + newest checkpoint
    logits = run.adapted.apply({"params": run.params_dict()}, tokens)
    model, params = run.for_decoding()             # LoRA merged: the plain model, fastest to sample
    params = run.merged_params()                   # the whole model's parameters (method none or LoRA)

A run's model is whatever its task trains: a DecoderLM, possibly adapted
(PEFT on a frozen base, a quantized QLoRA base), possibly with a scalar head
(reward model, PPO value head). `adapted_model(config, vocab_size)` builds that
description from a config (tasks build theirs with it too, so the loader and
the trainer can't disagree), `frozen_base` loads what a PEFT run adapts (its
base run's merged parameters, quantized for QLoRA, or a seeded random base),
and `load_run` restores the trained tree on top. Every array is restored
straight into the shardings the training rules give on `mesh`.

A Hugging Face decoder folder (config.json + safetensors + tokenizer.json, gpt2 or
llama) is read wherever a workdir is: `read_config` describes it as a plain lm run
of its architecture with data.tokenizer "pretrained", `read_tokenizer` loads its
tokenizer.json with its own special ids, and `load_run` converts its weights.

Used by: SFT and the preference/RL tasks (base, reference, reward model),
the distillation teacher, research.sample, research.export, Best-of-N and the evaluators.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from research import config as config_lib
from research.models import DecoderLM, hf
from research.peft.model import AdaptedModel, PeftSpec
from research.tokenizers import PretrainedTokenizer, load_tokenizer
from research.train import checkpoint
from research.train.sharding import logical_shardings, make_mesh, strip_boxes
from research.train.tasks import get_task, task_config

# The model fields a checkpoint's architecture fixes (what Hugging Face's config.json says); a run
# starting from a pretrained model takes these from it (`with_pretrained_source`).
ARCHITECTURE = (
    "vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim", "ffn", "norm", "norm_eps",
    "position", "rope_theta", "max_len", "tie_embeddings", "scale_tied_logits", "use_bias",
)  # fmt: skip


def adapted_model(config, vocab_size: int) -> AdaptedModel:
    """The model a run of `config` trains, as its task describes it (PEFT and heads only where the task uses them)."""
    task = get_task(config.train.task)
    if not task.decoder:
        raise ValueError(f"train.task={config.train.task!r} does not train a decoder LM; load_run reads decoder runs")
    model = DecoderLM(config_lib.model_config(config, vocab_size))
    if not task.adapts_base:
        return AdaptedModel(model, heads=task.model_heads)
    spec = PeftSpec.from_config(config.peft)
    quantized = spec.method == "lora" and config.quant.format != "none"
    return AdaptedModel(model, spec, quantized=quantized, heads=task.model_heads)


def init_tokens(config) -> jax.Array:
    """What init traces: one full row, so any attention window or block dividing seq_len works."""
    return jnp.zeros((1, config.data.seq_len), jnp.int32)


def abstract_params(boxed, mesh):
    """Boxed shapes -> ShapeDtypeStructs carrying the shardings the logical rules give on `mesh`."""
    shardings = logical_shardings(boxed, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), strip_boxes(boxed), shardings)


def read_config(workdir, *, field: str = "workdir") -> ml_collections.ConfigDict:
    """The run's config.json; for a Hugging Face folder, `pretrained_config`."""
    if hf.is_hf_folder(workdir):
        return pretrained_config(hf.resolve(workdir), field=field)
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"{field}={str(workdir)!r} holds no config.json: not a training workdir")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def pretrained_config(folder, *, field: str) -> ml_collections.ConfigDict:
    """A Hugging Face decoder folder described as one of our runs: an lm run of its architecture
    (config.json), data.tokenizer "pretrained", seq_len within its context."""
    hf_config = hf.read_config(str(folder))
    try:
        model = hf.config_from_hf(hf_config)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{field}={str(folder)!r}: {type(e).__name__}: {e}") from None
    if hf.family(hf_config["model_type"]).build is not DecoderLM:
        raise ValueError(
            f"{field}={str(folder)!r} is a {hf_config['model_type']!r} checkpoint; only decoder LMs "
            "(gpt2, llama) can stand in for a decoder run"
        )
    config = task_config("lm")
    for key in ARCHITECTURE:
        config.model[key] = getattr(model, key)
    config.data.tokenizer = "pretrained"
    config.data.seq_len = min(config.data.seq_len, model.max_len)
    return config


def pretrained_source(config) -> str:
    """The model this run starts from (its task's base, else train.init_from) when that is a Hugging
    Face folder or a run derived from one (data.tokenizer "pretrained"); else ""."""
    for source in filter(None, (base_workdir(config), config.train.init_from)):
        if hf.is_hf_folder(source):
            return source
        saved = epath.Path(source) / "config.json"
        if saved.exists() and json.loads(saved.read_text()).get("data", {}).get("tokenizer") == "pretrained":
            return source
    return ""


def with_pretrained_source(config) -> ml_collections.ConfigDict:
    """`config` with the architecture (model.ARCHITECTURE fields) and the tokenizer ("pretrained") of the
    pretrained model it starts from, if any: its shapes and ids are not the run's to choose."""
    source = pretrained_source(config)
    if not source:
        return config
    theirs = read_config(source, field="the pretrained source")
    taken = [f"model.{k}={theirs.model[k]!r}" for k in ARCHITECTURE if config.model[k] != theirs.model[k]]
    if taken:
        logging.info("From the pretrained model %s: %s", source, ", ".join(taken))
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key in ARCHITECTURE:
            config.model[key] = theirs.model[key]
        config.data.tokenizer = "pretrained"
    return config


def check_same_model(config, tokenizer, workdir, *, field: str) -> None:
    """Raises ValueError naming `field` and every difference when the run in `workdir` has another
    model or tokenizer than `config` describes. Reads config.json and tokenizer.json only.

    A PEFT base, a reference or a reward model must share the policy's architecture and tokenizer,
    or their log-probabilities and scores would not line up with the policy's tokens.
    """
    other = read_config(workdir, field=field)
    other_tokenizer = read_tokenizer(workdir, field)
    mine = dataclasses.asdict(config_lib.model_config(config, tokenizer.vocab_size))
    theirs = dataclasses.asdict(config_lib.model_config(other, other_tokenizer.vocab_size))
    diffs = [f"model.{k}: {field} {theirs[k]!r}, this run {v!r}" for k, v in mine.items() if theirs.get(k) != v]
    probe = "def f(x):\n    return x + 1  # ok"
    same = other_tokenizer.vocab_size == tokenizer.vocab_size
    if not same or list(other_tokenizer.encode(probe)) != list(tokenizer.encode(probe)):
        diffs.append(f"the tokenizer ({other.data.tokenizer}, vocab {other_tokenizer.vocab_size} vs "
                     f"{config.data.tokenizer}, vocab {tokenizer.vocab_size})")  # fmt: skip
    if diffs:
        raise ValueError(
            f"{field}={str(workdir)!r} holds another model than this run describes; "
            f"it must be the same one. Differences: {'; '.join(diffs)}"
        )


def read_tokenizer(workdir, field):
    if hf.is_hf_folder(workdir):
        return _pretrained_tokenizer(hf.resolve(workdir), field)
    path = epath.Path(workdir) / "tokenizer.json"
    if not path.exists():
        raise ValueError(f"{field}={str(workdir)!r} holds no tokenizer.json: not a finished training workdir")
    return load_tokenizer(path)


def _pretrained_tokenizer(folder, field):
    """A Hugging Face folder's tokenizer.json, which must fit in the checkpoint's embedding."""
    path = epath.Path(folder) / "tokenizer.json"
    if not path.exists():
        raise ValueError(f"{field}={str(folder)!r} is a Hugging Face folder without tokenizer.json")
    tokenizer = PretrainedTokenizer.from_file(path)
    rows = hf.read_config(str(folder)).get("vocab_size")
    if isinstance(rows, int) and tokenizer.vocab_size > rows:
        raise ValueError(
            f"{field}={str(folder)!r}: tokenizer.json has {tokenizer.vocab_size} tokens but the checkpoint's "
            f"embedding has {rows} rows (vocab_size in config.json): they belong to different models"
        )
    return tokenizer


def pretrained_params(folder, model_config, shardings):
    """A Hugging Face folder's weights as our plain parameter tree, placed on `shardings`."""
    model_type = hf.read_config(str(folder))["model_type"]
    boxed = hf.from_state_dict(hf.read_weights(str(folder)), model_config, model_type)
    return jax.device_put(strip_boxes(boxed), shardings)


def frozen_base(adapted: AdaptedModel, config, tokenizer, base_workdir: str, mesh, *, field: str):
    """What a PEFT run adapts, on `mesh`: `base_workdir`'s merged parameters (quantized for QLoRA),
    or, without a base workdir, a fresh init from train.seed + 1. None for method "none"."""
    if not adapted.adapts:
        return None
    core = DecoderLM(adapted.config)
    boxed = jax.eval_shape(lambda r: core.init(r, init_tokens(config))["params"], jax.random.key(0))
    abstract = abstract_params(boxed, mesh)
    if base_workdir:
        check_same_model(config, tokenizer, base_workdir, field=field)
        base_run = load_run(base_workdir, mesh, field=field)
        merged = base_run.merged_params()  # a reward model's score head, if any, is not part of the base
        base = jax.device_put(
            {k: v for k, v in merged.items() if k in abstract}, jax.tree.map(lambda a: a.sharding, abstract)
        )
    else:
        init = jax.jit(lambda r: strip_boxes(core.init(r, init_tokens(config))["params"]),
                       out_shardings=jax.tree.map(lambda a: a.sharding, abstract))  # fmt: skip
        base = init(jax.random.key(config.train.seed + 1))
    if not adapted.quantized:
        return base
    from research.quant.transform import quantize_params_from_config

    # Quantized leaves carry no logical names: replicate them on the mesh.
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put(jax.jit(lambda b: quantize_params_from_config(b, config.quant))(base), replicated)


@dataclasses.dataclass
class LoadedRun:
    workdir: epath.Path
    config: ml_collections.ConfigDict
    tokenizer: object
    adapted: AdaptedModel
    params: dict  # the trained tree, as the run's checkpoint holds it
    base: dict | None  # the frozen base of a PEFT run

    @property
    def model(self) -> DecoderLM:
        return self.adapted.model

    def params_dict(self) -> dict:
        """What `adapted.apply` takes as "params"."""
        return {"trainable": self.params, "base": self.base}

    def merged_params(self):
        """The whole model's plain parameters (method none: as trained; LoRA: merged into the base)."""
        return jax.jit(self.adapted.merged_params)(self.params, self.base)

    def for_decoding(self):
        """(model, params) to sample from fastest (research.decode)."""
        return self.adapted.for_decoding(self.params, self.base)


def base_workdir(config) -> str:
    """The run whose model `config`'s PEFT run adapts (its task says where it is named)."""
    return get_task(config.train.task).base_workdir(config)


def load_run(workdir, mesh=None, *, field: str = "workdir") -> LoadedRun:
    """The newest checkpoint of a decoder run in `workdir`, with its base; see the module docstring.

    field: the config key or flag that named `workdir`, for error messages. Only parameters are
    read (no optimizer state, no data iterator).
    """
    config = read_config(workdir, field=field)
    tokenizer = read_tokenizer(workdir, field)
    workdir = epath.Path(hf.resolve(workdir))
    try:
        adapted = adapted_model(config, tokenizer.vocab_size)
    except ValueError as e:
        raise ValueError(f"{field}={str(workdir)!r}: {e}") from None
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1)) if mesh is None else mesh
    boxed = jax.eval_shape(lambda r: adapted.init_trainable(r, init_tokens(config)), jax.random.key(0))
    abstract = abstract_params(boxed, mesh)
    try:
        if hf.is_hf_folder(workdir):
            params = pretrained_params(workdir, adapted.config, jax.tree.map(lambda a: a.sharding, abstract))
        else:
            params = checkpoint.latest_params(workdir, abstract)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None
    base = frozen_base(adapted, config, tokenizer, base_workdir(config), mesh, field=f"{field}'s base")
    return LoadedRun(workdir, config, tokenizer, adapted, params, base)


def replace_matching(params, source):
    """`params` with every leaf that `source` holds at the same path (and shape) replaced by it.

    A policy starting from its reference: the body is loaded, a value head keeps its fresh init.
    """
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(source)}

    def pick(path, leaf):
        other = flat.get(jax.tree_util.keystr(path))
        if other is None:
            return leaf
        if other.shape != leaf.shape:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} has shape {other.shape} in the source, "
                             f"{leaf.shape} here")  # fmt: skip
        # A copy: the train state is donated to each step, so it must not share buffers with `source`
        # (a frozen reference made of the same weights).
        return jax.device_put(jnp.array(other, dtype=leaf.dtype, copy=True), leaf.sharding)

    return jax.tree_util.tree_map_with_path(pick, params)
