r"""BERT-style: masked-LM pretraining on the embedded corpus, then [CLS] fine-tuning to tell which
stdlib package a code snippet comes from; accuracy against the majority-class baseline.

  python -m experiments.bert_classify --workdir workdirs/bert_classify [--arg scale=tiny]

1. train.task=mlm on python_stdlib (packed rows, 15% targets, 80/10/10) in WORKDIR/mlm.
2. train.task=classify starting from it (train.init_from) in WORKDIR/classify, and
   the same run from a random init in WORKDIR/scratch: what pretraining buys.
3. results.md / results.json: held-out-file accuracy of both vs the majority class.

`get_config(arg)` is the fine-tuning run (its train.init_from names the MLM
workdir, `mlm=DIR`); `get_pretrain_config(arg)` the MLM run. Arguments:
scale=tiny|full, mlm=DIR.
"""

import argparse
import json

from research.config import parse_arg
from research.train.tasks import task_config

SCALES = {
    # layers, d_model, heads, seq_len, batch, mlm steps, classify steps
    "tiny": (2, 64, 4, 128, 32, 400, 300),
    "full": (12, 768, 12, 512, 256, 100_000, 3_000),
}


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", mlm="workdirs/bert_classify/mlm")
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
    """Fine-tuning from the MLM run at `mlm` (train.init_from; "" for a random init)."""
    arg = _arg(arg)
    c = _config(arg, "classify", SCALES[arg.scale][6], 5e-4)
    c.train.init_from = arg.mlm
    return c


def _final(workdir) -> dict:
    from research.train.metrics import read_metrics

    evals = [m for m in read_metrics(workdir) if "eval_loss" in m]
    return evals[-1]


def run(workdir, arg=None):
    from etils import epath

    from research.train.loop import train

    workdir = epath.Path(workdir).absolute()
    mlm = workdir / "mlm"
    train(get_pretrain_config(arg), mlm)  # resumes, or does nothing when finished
    rows = []
    for name, init_from in (("classify", str(mlm)), ("scratch", "")):
        c = get_config(arg)
        c.train.init_from = init_from
        train(c, workdir / name)
        final = _final(workdir / name)
        rows.append(
            dict(
                run=name,
                pretrained=bool(init_from),
                eval_accuracy=final["eval_accuracy"],
                majority_baseline=final["majority_baseline"],
                eval_loss=final["eval_loss"],
            )
        )
    pre = _final(mlm)
    (workdir / "results.json").write_text(json.dumps(dict(mlm=pre, classify=rows), indent=1))
    classes = get_config(arg).classify.packages.split(",")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--arg", default=None, help="scale=tiny|full (as after ':' in --config)")
    args = parser.parse_args()
    run(args.workdir, args.arg)


if __name__ == "__main__":
    main()
