"""Hugging Face checkpoints <-> our models, from and to local folders (nothing is downloaded).

    model, params = load_pretrained("/path/to/gpt2")        # config.json + model.safetensors
    save_pretrained("/tmp/out", model, params)               # a folder transformers' from_pretrained reads

Families (Hugging Face `model_type` -> our model): gpt2, llama -> DecoderLM; bert -> EncoderModel;
t5 -> EncoderDecoder. A Hugging Face folder also stands in for a training workdir wherever a run
reads another model (research.train.runs: `train.init_from`, a PEFT base, a teacher, a reference,
research.sample), and `python -m research.export` writes one from a workdir.
`params` come back boxed (nn.Partitioned) with our logical axis names, like
`init_params`, so research.train.sharding shards them as it shards a fresh init.
"""

import json

import jax
from etils import epath

from research.models.hf import bert, gpt2, llama, t5
from research.models.hf.common import Tensors, assemble, flat_params
from research.models.hf.hub import is_hub_id, resolve
from research.models.hf.io import read_config, read_safetensors, read_weights, write_checkpoint, write_safetensors

FAMILIES = {m: module for module in (gpt2, llama, bert, t5) for m in module.MODEL_TYPES}


def family(name: str):
    """The converter module for a Hugging Face model_type."""
    if name not in FAMILIES:
        raise ValueError(f"model_type={name!r} has no converter; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def is_hf_folder(path) -> bool:
    """Whether `path` is a Hugging Face checkpoint folder (a config.json naming a model_type), not a
    training workdir of ours (whose config.json holds the run's sections); a Hub id ("hf://ORG/NAME",
    research.models.hf.hub) names the folder of its snapshot."""
    if not path:
        return False
    file = epath.Path(resolve(path)) / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "train" not in config


def decoder_model_type(config) -> str:
    """The Hugging Face model_type that holds a DecoderLM of `config` exactly: gpt2 or llama."""
    reasons = []
    for name in ("gpt2", "llama"):
        try:
            family(name).check(config)
            return name
        except ValueError as e:
            reasons.append(f"{name}: {e}")
    raise ValueError(f"this model has no Hugging Face form: {'; '.join(reasons)}")


def config_from_hf(hf_config: dict, **overrides):
    """Our model config for a Hugging Face config.json dict; `overrides` set our fields (dtype, attention, ...)."""
    return family(hf_config.get("model_type", "")).config_from_hf(hf_config, **overrides)


def from_state_dict(tensors: dict, config, model_type: str, *, rng=None):
    """Checkpoint tensors (name -> array) -> our boxed parameters for `config`.

    Raises naming the tensor when one is missing, has the wrong shape, or has
    no place in the config. Parameters a checkpoint may lack (a new task head)
    get a fresh init from `rng`.
    """
    fam = family(model_type)
    flat = fam.import_tensors(Tensors(tensors, prefixes=fam.PREFIXES), config)
    model = fam.build(config)
    rng = jax.random.key(0) if rng is None else rng
    abstract = jax.eval_shape(lambda: fam.init(model, rng))
    fresh = None
    if len(flat) < len(jax.tree.leaves(abstract)):  # some (optional) parameters are not in the checkpoint
        fresh = jax.jit(lambda r: fam.init(model, r))(rng)
    return assemble(abstract, flat, fresh=fresh)


def to_state_dict(params, config, model_type: str) -> dict:
    """Our parameters -> Hugging Face tensors (name -> float32 numpy) for `model_type`."""
    return family(model_type).export_tensors(flat_params(params), config)


def load_pretrained(path: str, *, rng=None, **overrides):
    """(model, boxed params) from a local Hugging Face checkpoint folder (config.json + weights)."""
    hf = read_config(path)
    config = config_from_hf(hf, **overrides)
    params = from_state_dict(read_weights(path), config, hf.get("model_type", ""), rng=rng)
    return family(hf["model_type"]).build(config), params


def save_pretrained(path: str, model, params, model_type: str) -> None:
    """Writes config.json + model.safetensors that `transformers`' from_pretrained(path) loads."""
    fam = family(model_type)
    fam.check(model.config)
    write_checkpoint(path, to_state_dict(params, model.config, model_type), fam.hf_config(model.config))


__all__ = [
    "FAMILIES",
    "config_from_hf",
    "decoder_model_type",
    "family",
    "is_hf_folder",
    "is_hub_id",
    "resolve",
    "from_state_dict",
    "load_pretrained",
    "read_config",
    "read_safetensors",
    "read_weights",
    "save_pretrained",
    "to_state_dict",
    "write_safetensors",
]
