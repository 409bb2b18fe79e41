r"""Write a decoder run as a Hugging Face folder that `transformers` loads.

  python -m research.export --workdir DIR --out HF_DIR

The model goes out in whichever form holds its architecture exactly (learned
positions + LayerNorm + biases: gpt2; RoPE + RMSNorm + SwiGLU: llama) as
config.json + model.safetensors; a LoRA run is merged into its base first (a
QLoRA base dequantized). The tokenizer goes out as tokenizer.json +
tokenizer_config.json where it has a Hugging Face form (a pretrained one, and
our bpe / wordpiece / unigram kinds, which are the `tokenizers` library's; added
tokens keep their ids); the byte, char and word kinds have none, so their file
is copied as research_tokenizer.json, which research.tokenizers.load_tokenizer reads.

The folder is written next to HF_DIR and renamed into place when complete, and
an HF_DIR that exists and is not empty is refused: nothing is overwritten.
"""

import json
import os
import shutil
import tempfile

import tokenizers
from absl import app, flags

from research.models import hf
from research.train.runs import load_run


def export(workdir, out) -> str:
    """Writes the run in `workdir` to the folder `out`; returns the model_type written."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out={out!r} exists and is not an empty folder; nothing was written")
    run = load_run(workdir, field="--workdir")
    if run.adapted.heads != ("logits",):
        raise ValueError(
            f"--workdir={str(workdir)!r}: train.task={run.config.train.task!r} has heads {list(run.adapted.heads)}; "
            "a causal-LM checkpoint holds the logits head alone"
        )
    if run.adapted.adapts and run.adapted.spec.method != "lora":
        raise ValueError(
            f"--workdir={str(workdir)!r}: peft.method={run.adapted.spec.method!r} adds modules a gpt2/llama "
            "checkpoint cannot hold (only LoRA merges into the base)"
        )
    model, params = run.for_decoding()
    try:
        model_type = hf.decoder_model_type(model.config)
    except ValueError as e:
        raise ValueError(f"--workdir={str(workdir)!r}: {e}") from None
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        hf.save_pretrained(staging, model, params, model_type)
        ids = _write_tokenizer(staging, run.tokenizer, model.config.max_len)
        config_file = os.path.join(staging, "config.json")
        with open(config_file) as f:
            config = json.load(f)
        config.update(ids)
        with open(config_file, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_type


def _write_tokenizer(folder, tokenizer, max_len) -> dict:
    """tokenizer.json + tokenizer_config.json (or research_tokenizer.json); returns the *_token_id fields."""
    base = getattr(tokenizer, "base", tokenizer)  # AddedTokens wraps the kind
    added = list(getattr(tokenizer, "added", ()))
    if hasattr(base, "hf_json"):  # the pretrained kind and our tokenizers-library kinds
        spec, roles = base.hf_json(), base.hf_special_tokens()
    else:
        tokenizer.save(os.path.join(folder, "research_tokenizer.json"))
        return {}
    library = tokenizers.Tokenizer.from_str(spec)
    if added:
        library.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in added])
        for t in added:
            if library.token_to_id(t) != tokenizer.token_to_id(t):
                raise ValueError(f"added token {t!r} would get id {library.token_to_id(t)}, not its "
                                 f"{tokenizer.token_to_id(t)}, in the exported tokenizer.json")  # fmt: skip
    library.save(os.path.join(folder, "tokenizer.json"))
    roles = {role: token for role, token in roles.items() if token is not None}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": max_len,
                **{f"{role}_token": token for role, token in roles.items()},
            },
            f,
            indent=2,
            sort_keys=True,
        )
    return {f"{role}_token_id": library.token_to_id(roles[role]) for role in ("bos", "eos", "pad") if role in roles}


def main(argv):
    del argv
    model_type = export(flags.FLAGS.workdir, flags.FLAGS.out)
    print(f"wrote a {model_type} checkpoint to {flags.FLAGS.out}")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A decoder run's workdir (research.main), or a Hugging Face folder.")
    flags.DEFINE_string("out", None, "The Hugging Face folder to write; must not exist or be empty.")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
