r"""Sample from a trained workdir (any decoder run: plain, fine-tuned with PEFT, QLoRA, RL) or from a
Hugging Face gpt2/llama folder (config.json + safetensors + tokenizer.json).

  python -m research.sample --workdir DIR --prompt "def " [--prompt "class "] \
      --max_new_tokens 200 --temperature 0.8 --top_p 0.95
"""

import jax
from absl import app, flags

from research.decode import generate
from research.train.runs import load_run


def print_samples(workdir, prompts, *, max_new_tokens, temperature, top_k, top_p, seed=0):
    run = load_run(workdir, field="--workdir")  # any decoder run: plain, PEFT (LoRA merged), QLoRA
    model, params, tokenizer = *run.for_decoding(), run.tokenizer
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
    flags.DEFINE_string("workdir", None, "A workdir written by research.main, or a Hugging Face folder.")
    flags.DEFINE_multi_string("prompt", ["def "], "Prompt(s); repeat the flag for a batch.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate (capped by the context).")
    flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass (1 = off).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
