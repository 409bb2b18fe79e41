r"""Fine-tuning: full vs LoRA r in {1, 2, 4, 8, 16, 64} vs prefix tuning vs adapters, on the instruction set.

  python -m research.sweep --config experiments/lora_rank.py[:scale=tiny] --workdir workdirs/lora_rank

Stages (research/experiment.py):
1. base: pretrains a small byte-level LM on the stdlib corpus in WORKDIR/base.
   At scale=small a second stage, skills, fully fine-tunes it on the same string skills written
   as Python (research.data.python_skills: ">>> 'lamp'[::-1]" -> "'pmal'") in WORKDIR/skills,
   and the variants start from that: a base that can already do the task, as in the LoRA paper.
2. Fine-tunes the base on research.data.instructions (train.task=sft), same batches, same
   steps, once per variant: full (every parameter, train.init_from = the base) in
   WORKDIR/full; LoRA on the attention projections (q, k, v, out) at each rank,
   alpha = 16, in WORKDIR/lora/rank=R,alpha=A (at scale=small also on every attention and
   MLP projection, in WORKDIR/lora_all/...); prefix tuning in WORKDIR/prefix and
   adapters in WORKDIR/adapter (base frozen, read from sft.base_workdir; their
   train.init_from is empty).
3. analyze measures per variant: exact match of greedy answers on held-out prompts
   (overall and per task kind), trainable parameters, seconds per train step
   (median of the logged windows, compilation excluded) and the compiled train
   step's memory (XLA's buffer assignment: arguments + outputs - donated + temporaries,
   for one device: deterministic, unlike a noisy process RSS on a shared CPU).
Writes results.md, results.json and lora_rank.png in WORKDIR.

Scales. tiny: the base has only read Python source, and fine-tuning on all five instruction
kinds for 200 steps teaches the answer format but not the answers (exact match 0-4% for every
variant, full fine-tuning included): loss is what separates the methods there. small was sized
by one-seed probes (README) until the baseline left the floor: the three kinds a 2-layer model
learns (uppercase, reverse, sort), a skills stage of 1000 steps (exact match 0.67 on the Python
forms), then 200 fine-tuning steps, where full fine-tuning reaches 0.45 instead of 0.02 from
the plain base; the LoRA learning rate (1e-2 instead of 3e-3: r=8 0.15 -> 0.38 on q/k/v/out)
was chosen in the same probes. About 9 minutes per seed on 2 idle CPU cores (15 variants);
the 3-seed table and what it shows are in the README.

alpha is fixed at 16 for every rank, as in the LoRA paper (alpha set once, at the first rank
tried, and not tuned): the update is (alpha / r) A @ B with B starting at 0, Adam moves each of
B's r rows by about the learning rate per step along directions that add up over the r rows, so
with alpha fixed the update to W is about the same size at every rank and one learning rate
serves them all. With alpha = 2r (alpha / r fixed; this file's earlier protocol) the update
grows with r: at scale=small and lr 1e-2, chosen at r=8, r=64 collapsed (exact match 0.02 ± 0.03
over 3 seeds) and reached 0.79 at lr 3e-3 (one seed).

Learning rates: 1e-3 for full fine-tuning, 3e-3 (tiny) or 1e-2 (small) for LoRA and adapters,
whose few parameters start at a no-op and need larger steps, and 3e-2 for prefix tuning, whose
keys/values must grow from nothing to the scale of the model's own (at 3e-3 the prefix
barely moved in 200 steps: val loss 5.10, the base's own level); everything else is shared.
`get_config(arg)` is the full fine-tuning run (for research.main it reads
workdirs/lora_rank/base, where the command above pretrains; the stages set the base
workdir); `get_base_config(arg)` the pretraining run. `--config.*` overrides apply to
every run that has the key (train.steps: the base and every variant).
Arguments: scale=tiny|small|full, steps=N (fine-tuning steps).
"""

import dataclasses
import json

from research.config import default_config, parse_arg, swiglu_mlp_dim
from research.data.instructions import KINDS
from research.experiment import Stage, apply_overrides
from research.train.tasks import with_task


@dataclasses.dataclass(frozen=True)
class Scale:
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    seq_len: int
    batch: int
    pretrain_steps: int
    finetune_steps: int
    eval_prompts: int
    tasks: str = ",".join(KINDS)  # sft.tasks of the variants
    skills_steps: int = 0  # > 0: a skills stage (the same skills as Python) between base and variants
    peft_lr: float = 3e-3  # LoRA and adapters
    lora_all: bool = False  # also a LoRA sweep over every attention and MLP projection


_TINY = Scale(2, 128, 4, 2, 128, 16, 400, 200, 100)
SCALES = {
    "tiny": _TINY,
    # The tiny model and budget, on a base that has the skills (see the module docstring).
    "small": dataclasses.replace(_TINY, tasks="uppercase,reverse,sort", skills_steps=1000, peft_lr=1e-2, lora_all=True),
    "full": Scale(12, 768, 12, 4, 512, 64, 20_000, 2_000, 1_000, lora_all=True),
}
FULL_LR = 1e-3
PREFIX_LR = 3e-2
RANKS = (1, 2, 4, 8, 16, 64)  # LoRA ranks
LORA_ALPHA = 16.0  # the same for every rank (the module docstring says why)
ALL_PROJECTIONS = r"attn/(query|key|value|out)$|mlp/\w+/kernel$"  # peft.target of the lora_all stage
PEFT_OPTIONS = {"lora": {}, "prefix": {"peft.prefix_len": 8}, "adapter": {"peft.adapter_dim": 16}}
BASE_WORKDIR = "workdirs/lora_rank/base"  # get_config's base outside the stages (README's workdir)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", steps=0)
    if arg.scale not in SCALES:
        raise ValueError(f"lora_rank scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def get_base_config(arg=None):
    """The pretrained LM: next-token loss on the stdlib corpus."""
    scale = SCALES[_arg(arg).scale]
    c = default_config()
    c.model.update(
        num_layers=scale.layers,
        d_model=scale.d_model,
        num_heads=scale.heads,
        num_kv_heads=scale.kv_heads,
        ffn="swiglu",
        norm="rmsnorm",
        position="rope",
        mlp_dim=swiglu_mlp_dim(scale.d_model),
    )
    c.data.seq_len = scale.seq_len
    steps = scale.pretrain_steps
    c.train.update(
        steps=steps, batch_size=scale.batch, eval_every=steps, checkpoint_every=steps, eval_batches=4, log_every=50
    )
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10))
    return c


def _finetune_config(arg, steps: int, tasks: str):
    """Full fine-tuning of the base on the instruction kinds `tasks` for `steps` steps."""
    c = with_task(get_base_config(arg), "sft")
    c.train.update(
        init_from=BASE_WORKDIR,
        steps=steps,
        eval_every=steps,
        checkpoint_every=steps,
        log_every=max(steps // 10, 1),
        eval_batches=4,
        seed=1,  # another shuffle than the pretraining run's
    )
    c.optim.update(learning_rate=FULL_LR, warmup_steps=min(20, steps // 10), weight_decay=0.0)
    c.sft.update(base_workdir=BASE_WORKDIR, tasks=tasks, eval_examples=SCALES[_arg(arg).scale].eval_prompts,
                 max_new_tokens=14)  # fmt: skip
    return c


def get_config(arg=None):
    """Full fine-tuning of the base on the instruction set; the variants override peft.*."""
    parsed = _arg(arg)
    scale = SCALES[parsed.scale]
    return _finetune_config(arg, parsed.steps or scale.finetune_steps, scale.tasks)


def get_skills_config(arg=None):
    """scale=small's skills stage: full fine-tuning of the base on the variants' skills written as Python."""
    scale = SCALES[_arg(arg).scale]
    kinds = [f"py_{kind}" for kind in scale.tasks.split(",")]
    return _finetune_config(arg, scale.skills_steps, ",".join(kinds))


def get_stages(arg=None):
    """base (then skills at scale=small), then full fine-tuning and the PEFT methods, all reading that base."""
    scale = SCALES[_arg(arg).scale]

    def peft(method, **options):
        # A PEFT run keeps the base frozen, read from sft.base_workdir: no train.init_from.
        lr = PREFIX_LR if method == "prefix" else scale.peft_lr
        overrides = {"peft.method": method, "train.init_from": "", "optim.learning_rate": lr}
        return apply_overrides(get_config(arg), {**overrides, **PEFT_OPTIONS[method], **options})

    ranks = tuple({"peft.rank": r, "peft.alpha": LORA_ALPHA} for r in RANKS)
    stages = [Stage("base", get_base_config(arg))]
    if scale.skills_steps:
        stages.append(
            Stage("skills", get_skills_config(arg), inputs={"train.init_from": "base", "sft.base_workdir": "base"})
        )
    start = stages[-1].name
    reads_base = {"sft.base_workdir": start}
    stages += [
        Stage("full", get_config(arg), inputs={"train.init_from": start, **reads_base}),
        Stage("lora", peft("lora"), inputs=reads_base, sweep=ranks),
    ]
    if scale.lora_all:
        stages.append(
            Stage("lora_all", peft("lora", **{"peft.target": ALL_PROJECTIONS}), inputs=reads_base, sweep=ranks)
        )
    return [
        *stages,
        Stage("prefix", peft("prefix"), inputs=reads_base),
        Stage("adapter", peft("adapter"), inputs=reads_base),
    ]


def _label(run) -> str:
    return f"{run.stage}_r{run.config.peft.rank}" if run.stage in ("lora", "lora_all") else run.stage


def step_memory_bytes(config) -> int:
    """Bytes XLA assigns to one compiled train step on one device (arguments + outputs - donated + temps)."""
    import functools

    import jax

    from research.tokenizers import ByteTokenizer
    from research.train.runs import init_tokens
    from research.train.sharding import make_mesh, strip_boxes
    from research.train.state import make_optimizer, state_shapes
    from research.train.step import train_step
    from research.train.tasks_sft import SFTTask

    config = config.copy_and_resolve_references()
    config.mesh.update(data=1)
    task = SFTTask(config, ByteTokenizer())
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        tx = make_optimizer(config.optim, config.train.steps)
        state, _ = state_shapes(task.model, tx, mesh, init_fn=task.init_params)
        adapted = task.adapted
        base = jax.eval_shape(adapted.init_base, jax.random.key(0), init_tokens(config))
        frozen = strip_boxes(base) if adapted.adapts else None
        rows = (config.train.batch_size, config.data.seq_len)
        batch = {k: jax.ShapeDtypeStruct(rows, "int32") for k in ("tokens", "segment_ids", "positions", "loss_mask")}
        step = functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=lambda s: 1e-3, loss_fn=task.loss)
        m = jax.jit(step, donate_argnums=0).lower(state, batch, frozen).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def analyze(workdir, runs, arg=None):
    """One row per fine-tuning run (the base excluded): quality, size, speed and step memory."""
    import numpy as np

    from research.train.metrics import read_metrics

    del arg
    rows = []
    for run in runs:
        if run.stage in ("base", "skills"):
            continue
        metrics = read_metrics(run.workdir)
        tokens_per_step = run.config.train.batch_size * run.config.data.seq_len
        rates = [m["tokens_per_sec"] for m in metrics if m.get("tokens_per_sec")]
        final = [m for m in metrics if "exact_match" in m][-1]
        rows.append(
            dict(
                name=_label(run),
                trainable_params=next(m["num_params"] for m in metrics if "num_params" in m),
                exact_match=final["exact_match"],
                per_kind={k.removeprefix("exact_match_"): v for k, v in final.items() if k.startswith("exact_match_")},
                eval_loss=final["eval_loss"],
                step_seconds=float(np.median([tokens_per_step / r for r in rates])),
                step_memory_bytes=step_memory_bytes(run.config),
            )
        )
    full = rows[0]["trainable_params"]
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    kinds = list(rows[0]["per_kind"])
    lines = [
        "| method | trainable params | % of full | exact match | "
        + " | ".join(kinds)
        + " | val loss (response) | s / step | step memory (MB) |",
        "|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|---:|---:|",
    ]
    for r in rows:
        memory = f"{r['step_memory_bytes'] / 1e6:.1f}"
        lines.append(
            f"| {r['name']} | {r['trainable_params']:,} | {100 * r['trainable_params'] / full:.2f}% | "
            f"{r['exact_match']:.2f} | "
            + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds)
            + f" | {r['eval_loss']:.3f} | {r['step_seconds']:.3f} | {memory} |"
        )
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, workdir / "lora_rank.png")


def plot_seeds(workdir, merged, arg=None):
    """lora_rank.png again from every seed's rows: mean loss and exact match with ± std error bars."""
    del arg
    _plot(merged, workdir / "lora_rank.png")


def _method(name: str) -> str:
    return name.rpartition("_r")[0] if name.startswith("lora") else name  # "lora_all_r8" -> "lora_all"


def _plot(rows, path):
    """Validation loss and exact match vs trainable parameters, a colour and marker per method (the LoRA ranks
    joined by a line); merged rows get ± std error bars."""
    from matplotlib.figure import Figure  # no pyplot: no display needed, caller's backend untouched

    from research.stats import mean_err

    methods = list(dict.fromkeys(_method(r["name"]) for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    markers = {"full": "s", "lora": "o", "lora_all": "D"}
    fig = Figure(figsize=(11, 4))
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("eval_loss", "exact_match"),
        ("validation loss on response tokens (nats per byte)", "exact match (fraction of held-out prompts)"),
        strict=True,
    ):
        for method in methods:
            mine = sorted(
                (mean_err(r["trainable_params"])[0], *mean_err(r[key]), r["name"])
                for r in rows
                if _method(r["name"]) == method
            )
            params, mean, err, names = zip(*mine, strict=True)
            ax.errorbar(params, mean, yerr=err, fmt=markers.get(method, "^") + ("-" if len(mine) > 1 else ""),
                        capsize=3, color=colors[method], label=method)  # fmt: skip
            for p, v, name in zip(params, mean, names, strict=True):
                ax.annotate(name, (p, v), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (count, log scale)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Instruction tuning: full vs LoRA rank vs prefix vs adapters (bars: ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
