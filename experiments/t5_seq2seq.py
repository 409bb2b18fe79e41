r"""T5-style: span-corruption pretraining on the embedded corpus, then seq2seq fine-tuning on generated
tasks (reverse, uppercase, sort, arithmetic); exact match of greedy generations on held-out prompts.

  python -m research.sweep --config experiments/t5_seq2seq.py[:scale=tiny] --workdir workdirs/t5_seq2seq

Stages (research/experiment.py), each one run in WORKDIR/<stage>:
1. span: train.task=span_corruption on python_stdlib (relative position bias,
   RMSNorm, pre-norm, tied embedding scaled by d_model**-0.5: the T5 recipe).
2. seq2seq: train.task=seq2seq from the span run (train.init_from).
3. scratch: the same fine-tuning from a random init. Generation runs through
   research.decode (encoder once, cached cross-attention).
Then results.md / results.json in WORKDIR: the span run's held-out target-token
accuracy, and exact match (and token accuracy) of both fine-tuned runs.

`get_config(arg)` is the fine-tuning run (for research.main its train.init_from
names workdirs/t5_seq2seq/span, where the command above pretrains; the stages set
it); `get_pretrain_config(arg)` the span-corruption run. `--config.*` overrides
apply to every stage that has the key. Arguments: scale=tiny|full.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.train.tasks import task_config

SCALES = {
    # layers, d_model, heads, seq_len (pretraining rows), batch, span steps, seq2seq steps
    "tiny": (2, 64, 4, 128, 32, 300, 600),
    "full": (12, 768, 12, 512, 128, 100_000, 10_000),
}
SPAN_WORKDIR = "workdirs/t5_seq2seq/span"  # get_config's init_from outside the stages (README's workdir)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny")
    if arg.scale not in SCALES:
        raise ValueError(f"t5_seq2seq scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def _config(arg, task, steps, lr):
    layers, d_model, heads, seq_len, batch, _, _ = SCALES[arg.scale]
    c = task_config(task)
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=heads,
        mlp_dim=4 * d_model,
        ffn="geglu",
        norm="rmsnorm",
        position="relative",
        tie_embeddings=True,
        scale_tied_logits=True,
    )
    c.encoder.update(relative_buckets=32, relative_max_distance=128)
    c.data.seq_len = seq_len
    c.train.update(
        task=task,
        steps=steps,
        batch_size=batch,
        eval_every=max(steps // 3, 1),
        checkpoint_every=steps,
        eval_batches=4,
        log_every=max(steps // 20, 1),
    )
    c.seq2seq.update(eval_examples=200)
    c.optim.update(learning_rate=lr, warmup_steps=min(50, steps // 10), weight_decay=0.01)
    return c


def get_pretrain_config(arg=None):
    arg = _arg(arg)
    return _config(arg, "span_corruption", SCALES[arg.scale][5], 2e-3)


def get_config(arg=None):
    """Fine-tuning from a span-corruption run (train.init_from; "" for a random init)."""
    arg = _arg(arg)
    c = _config(arg, "seq2seq", SCALES[arg.scale][6], 2e-3)
    c.train.init_from = SPAN_WORKDIR
    return c


def get_stages(arg=None):
    scratch = get_config(arg)
    scratch.train.init_from = ""
    return [
        Stage("span", get_pretrain_config(arg)),
        Stage("seq2seq", get_config(arg), inputs={"train.init_from": "span"}),
        Stage("scratch", scratch),
    ]


def _final(workdir) -> dict:
    from research.train.metrics import read_metrics

    return [m for m in read_metrics(workdir) if "eval_loss" in m][-1]


def analyze(workdir, runs, arg=None):
    """The span-corruption run's final eval, and both fine-tuned runs' exact match."""
    del arg
    by_stage = {run.stage: run for run in runs}
    rows = []
    for name in ("seq2seq", "scratch"):
        run = by_stage[name]
        f = _final(run.workdir)
        rows.append(
            dict(
                run=name,
                pretrained=bool(run.config.train.init_from),
                exact_match=f["exact_match"],
                token_accuracy=f.get("eval_token_accuracy"),
                eval_loss=f["eval_loss"],
            )
        )
    pre = _final(by_stage["span"].workdir)
    (workdir / "results.json").write_text(json.dumps(dict(span_corruption=pre, seq2seq=rows), indent=1))
    tasks = by_stage["seq2seq"].config.seq2seq.tasks
    lines = [
        f"Span corruption: held-out target-token accuracy {pre.get('eval_token_accuracy', float('nan')):.3f}, "
        f"loss {pre['eval_loss']:.3f}",
        "",
        f"Seq2seq fine-tuning on {tasks}; greedy generations on held-out prompts:",
        "",
        "| run | init | exact match | target-token accuracy | eval loss |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        init = "span-corruption-pretrained" if r["pretrained"] else "random"
        lines.append(
            f"| {r['run']} | {init} | {r['exact_match']:.3f} | {r['token_accuracy']:.3f} | {r['eval_loss']:.3f} |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows
