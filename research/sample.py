r"""Sample from a trained workdir.

  python -m research.sample --workdir DIR --prompt "def " [--prompt "class "] \
      --max_new_tokens 200 --temperature 0.8 --top_p 0.95
"""

import json

import jax
from absl import app, flags
from etils import epath
from ml_collections import ConfigDict

from research import config as config_lib
from research.data import load_tokenizer
from research.decode import generate
from research.models import DecoderLM
from research.train import checkpoint
from research.train.sharding import make_mesh
from research.train.state import make_optimizer, state_shapes


def load_model(workdir):
    """(model, params, tokenizer, config) from the newest checkpoint in `workdir`."""
    workdir = epath.Path(workdir)
    if not (workdir / "config.json").exists():
        raise ValueError(f"--workdir {workdir} holds no run (no config.json)")
    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    tokenizer = load_tokenizer(workdir / "tokenizer.json")
    model = DecoderLM(config_lib.model_config(config, tokenizer.vocab_size))
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    abstract, _ = state_shapes(model, make_optimizer(config.optim, config.train.steps), mesh)
    # Only the params are read: no optimizer state, no data iterator.
    params = checkpoint.latest_params(workdir, abstract.params)
    return model, params, tokenizer, config


def print_samples(workdir, prompts, *, max_new_tokens, temperature, top_k, top_p, seed=0):
    model, params, tokenizer, _ = load_model(workdir)
    encoded = [tokenizer.encode(p).tolist() for p in prompts]
    # Cap the new tokens by what the context has left (generate() refuses prompts that fill it).
    max_new_tokens = max(1, min(max_new_tokens, model.config.max_len - max(len(e) for e in encoded)))
    outs = generate(
        model,
        params,
        encoded,
        max_new_tokens=max_new_tokens,
        rng=jax.random.key(seed),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    for prompt, out in zip(prompts, outs, strict=True):
        print("=" * 80)
        print(prompt + tokenizer.decode(out))
    return outs


def main(argv):
    del argv
    f = flags.FLAGS
    print_samples(
        f.workdir,
        f.prompt,
        max_new_tokens=f.max_new_tokens,
        temperature=f.temperature,
        top_k=f.top_k,
        top_p=f.top_p,
        seed=f.seed,
    )


if __name__ == "__main__":
    # Flags live here so research.main can import this module without redefining them.
    flags.DEFINE_string("workdir", None, "A workdir written by research.main.")
    flags.DEFINE_multi_string("prompt", ["def "], "Prompt(s); repeat the flag for a batch.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate (capped by the context).")
    flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass (1 = off).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
