r"""BERT-style: masked-LM pretraining on the embedded corpus, then [CLS] fine-tuning to tell which
stdlib package a code snippet comes from; accuracy against the majority-class baseline.

  python -m research.sweep --config experiments/bert_classify.py[:scale=tiny] --workdir workdirs/bert_classify

Stages (research/experiment.py), each one run in WORKDIR/<stage>:
1. mlm: train.task=mlm on python_stdlib (packed rows, 15% targets, 80/10/10).
2. classify: train.task=classify starting from the mlm run (train.init_from).
3. scratch: the same fine-tuning from a random init: what pretraining buys.
Then results.md / results.json in WORKDIR: the MLM run's held-out masked-token
accuracy, and held-out-file accuracy of both classifiers vs the majority class.

`get_config(arg)` is the fine-tuning run (for research.main its train.init_from
names workdirs/bert_classify/mlm, where the command above pretrains; the stages
set it); `get_pretrain_config(arg)` the MLM run. `--config.*` overrides apply to
every stage that has the key. Arguments: scale=tiny|full.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.train.tasks import task_config

SCALES = {
    # layers, d_model, heads, seq_len, batch, mlm steps, classify steps
    "tiny": (2, 64, 4, 128, 32, 400, 300),
    "full": (12, 768, 12, 512, 256, 100_000, 3_000),
}
MLM_WORKDIR = "workdirs/bert_classify/mlm"  # get_config's init_from outside the stages (README's workdir)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny")
    if arg.scale not in SCALES:
        raise ValueError(f"bert_classify scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def _config(arg, task, steps, lr):
    layers, d_model, heads, seq_len, batch, _, _ = SCALES[arg.scale]
    c = task_config(task)
    c.model.update(
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=heads,
        ffn="gelu_exact",
        norm="layernorm",
        norm_eps=1e-12,
        position="learned",
        use_bias=True,
    )
    c.encoder.post_norm = True  # BERT
    c.data.seq_len = seq_len
    c.train.update(
        task=task,
        steps=steps,
        batch_size=batch,
        eval_every=max(steps // 4, 1),
        checkpoint_every=steps,
        eval_batches=4,
        log_every=max(steps // 20, 1),
    )
    c.optim.update(learning_rate=lr, warmup_steps=min(50, steps // 10), weight_decay=0.01)
    return c


def get_pretrain_config(arg=None):
    arg = _arg(arg)
    return _config(arg, "mlm", SCALES[arg.scale][5], 1e-3)


def get_config(arg=None):
    """Fine-tuning from an MLM run (train.init_from; "" for a random init)."""
    arg = _arg(arg)
    c = _config(arg, "classify", SCALES[arg.scale][6], 5e-4)
    c.train.init_from = MLM_WORKDIR
    return c


def get_stages(arg=None):
    scratch = get_config(arg)
    scratch.train.init_from = ""
    return [
        Stage("mlm", get_pretrain_config(arg)),
        Stage("classify", get_config(arg), inputs={"train.init_from": "mlm"}),
        Stage("scratch", scratch),
    ]


def _final(workdir) -> dict:
    from research.train.metrics import read_metrics

    evals = [m for m in read_metrics(workdir) if "eval_loss" in m]
    return evals[-1]


def analyze(workdir, runs, arg=None):
    """The MLM run's final eval, and both classifiers' accuracy vs the majority class."""
    del arg
    by_stage = {run.stage: run for run in runs}
    rows = []
    for name in ("classify", "scratch"):
        run = by_stage[name]
        final = _final(run.workdir)
        rows.append(
            dict(
                run=name,
                pretrained=bool(run.config.train.init_from),
                eval_accuracy=final["eval_accuracy"],
                majority_baseline=final["majority_baseline"],
                eval_loss=final["eval_loss"],
            )
        )
    pre = _final(by_stage["mlm"].workdir)
    (workdir / "results.json").write_text(json.dumps(dict(mlm=pre, classify=rows), indent=1))
    classes = by_stage["classify"].config.classify.packages.split(",")
    lines = [
        f"MLM pretraining: held-out masked-token accuracy {pre.get('eval_mlm_accuracy', float('nan')):.3f}, "
        f"loss {pre['eval_loss']:.3f}",
        "",
        f"Which stdlib package ({len(classes)} classes: {', '.join(classes)}) a snippet from an unseen file is from:",
        "",
        "| run | init | eval accuracy | majority baseline | eval loss |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        init = "MLM-pretrained" if r["pretrained"] else "random"
        lines.append(
            f"| {r['run']} | {init} | {r['eval_accuracy']:.3f} | {r['majority_baseline']:.3f} | {r['eval_loss']:.3f} |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows
