r"""Evaluate a finished run (or a Hugging Face folder) with what its task declares, and write a table.

  python -m research.evaluate --workdir DIR [--eval_files 'data/val/*.jsonl'] [--eval_batches 16] \
      [--bits_per_byte_bytes 200000] [--out results/eval.json]

What is measured is what training measures at its eval steps, from the newest
checkpoint, so a rerun reproduces the run's last eval line: the task's eval sums on
the eval split (loss, perplexity where the loss is a per-token NLL, and the task's
own sums, e.g. masked-token or classification accuracy) and its host-side
evaluation (exact match of greedy generations for sft, seq2seq and the RL tasks,
through research.decode: a PEFT run decodes over its frozen base, a QLoRA one over
the quantized base). A decoder run adds bits per byte of the eval split's first
documents (research.train.bits_per_byte), which compares models across tokenizers.

--workdir may be a Hugging Face gpt2/llama folder or hf:// id (research.train.runs
reads it as an lm run); its data is the default corpus unless --eval_files names
yours. The table is printed; --out also writes it as JSON and Markdown (PATH and
PATH with .md), refusing to overwrite either. Nothing in --workdir is written.
"""

import functools
import json
import os

import flax.linen as nn
import jax
from absl import app, flags

from research.data.pipeline import document_texts
from research.models import hf
from research.train import checkpoint, runs
from research.train.bits_per_byte import bits_per_byte
from research.train.loop import check_batch_fits_mesh, evaluate
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.step import eval_step
from research.train.tasks import data_spec, get_task, validate_config


def evaluate_run(workdir, *, eval_files: str = "", eval_batches: int = 0, bits_per_byte_bytes: int = 100_000) -> dict:
    """{metric: value} of the run in `workdir` (module docstring); eval_batches 0 keeps the run's own."""
    config = runs.read_config(workdir, field="--workdir")
    with config.unlocked():
        if eval_files:
            config.data.update(train_files=eval_files, eval_files=eval_files)
        if eval_batches:
            config.train.eval_batches = eval_batches
    validate_config(config)
    check_batch_fits_mesh(config, jax.device_count())
    tokenizer = runs.read_tokenizer(workdir, "--workdir")
    task = get_task(config.train.task)(config, tokenizer)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        boxed = jax.eval_shape(task.init_params, jax.random.key(0))
        abstract = runs.abstract_params(boxed, mesh)
        if hf.is_hf_folder(workdir):
            shardings = jax.tree.map(lambda a: a.sharding, abstract)
            params = runs.pretrained_params(hf.resolve(workdir), task.model.config, shardings)
        else:
            params = checkpoint.latest_params(workdir, abstract)
        frozen = task.frozen_params(mesh)
        batches = task.eval_batches(jax.process_index(), jax.process_count())
        p_eval = jax.jit(functools.partial(eval_step, sums_fn=task.eval_sums))
        out = evaluate(p_eval, params, frozen, batches, mesh, perplexity=task.reports_perplexity)
        out.update(task.evaluate(params, frozen))
        if task.decoder and bits_per_byte_bytes:  # on the weights already loaded, not a second read
            texts = document_texts(data_spec(config), "eval", max_bytes=bits_per_byte_bytes)
            model, decode_params = task.for_decoding(params, frozen)
            out.update(bits_per_byte(model, decode_params, tokenizer, texts, seq_len=config.data.seq_len))
    return {"workdir": str(workdir), "task": config.train.task, **out}


def markdown(results: dict) -> str:
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    return "\n".join(["| metric | value |", "|---|---:|", *rows]) + "\n"


def report(workdir, *, out: str = "", **kwargs) -> dict:
    """evaluate_run, the table printed and, with `out`, written as PATH (JSON) and PATH.md; an existing
    one is refused before anything runs."""
    if out:
        for path in (out, out + ".md"):
            if os.path.exists(path):
                raise ValueError(f"--out: {path} exists; nothing was written")
    results = evaluate_run(workdir, **kwargs)
    table = markdown(results)
    print(table)
    if out and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
        with open(out + ".md", "w") as f:
            f.write(table)
    return results


def main(argv):
    del argv
    f = flags.FLAGS
    report(f.workdir, out=f.out, eval_files=f.eval_files, eval_batches=f.eval_batches,
           bits_per_byte_bytes=f.bits_per_byte_bytes)  # fmt: skip


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A run's workdir (research.main), a Hugging Face folder or an hf:// id.")
    flags.DEFINE_string("eval_files", "", "Comma-separated globs of .jsonl/.txt files to evaluate on instead.")
    flags.DEFINE_integer("eval_batches", 0, "Eval batches (0: the run's train.eval_batches).")
    flags.DEFINE_integer("bits_per_byte_bytes", 100_000, "Eval-split bytes for bits per byte (decoders; 0: skip).")
    flags.DEFINE_string("out", "", "Also write the results here as JSON (and PATH.md).")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
