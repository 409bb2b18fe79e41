r"""Accuracy vs RL steps: GRPO teaches a model that rarely thinks to think, and accuracy rises with it.

  python -m research.sweep --config experiments/rl_steps.py --workdir workdirs/rl_steps

The reference's "performance vs RL steps" figure (DeepSeek-R1-Zero): run RL longer
and the model learns to reason before answering. Here, on D-digit addition
(research/data/reasoning.py, `add`), which a small model barely does in one forward
pass (every carry at once) but does reliably one column per trace step:

  sft          a byte-level model instruction-tuned from scratch on addition problems whose
               responses mostly answer directly; a minority (THINK) show the column trace
               first (`<think>` columns `</think><answer>`...). Sampled, it thinks now and then.
  grpo         GRPO from it with the TinyZero reward (1 correct, 0.1 well-formed wrong,
               0 malformed): rollouts that happened to think are right more often, so
               group-relative advantages push the policy to think.
  sft_direct / grpo_direct   the ablation: no traces in SFT (THINK = 0). RL has nothing
               to amplify, and accuracy stays near where direct answering leaves it.
Every EVAL_EVERY steps each GRPO run samples held-out prompts (temperature 1) and logs
accuracy (eval_gold_reward), the fraction of responses that think (eval_thinks) and the
response length. analyze() writes results.md, results.json and rl_steps.png.

Sizes (SCALES): 3-digit operands and 1,000 SFT steps with THINK = 0.3 were chosen on one
seed so that the SFT model, forced to think, is nearly always right (greedy 0.995 on 200
held-out prompts) while forced to answer directly it is near chance (0.10), and sampled
freely it thinks about a quarter of the time (held-out accuracy 0.32 at RL step 0): the
regime where RL steps can show a wide rise. 4 digits with 600 SFT steps and THINK = 0.2
left the trace itself mostly wrong (0.135 forced to think), too rare a success for RL.
Arguments: scale=tiny|full, seed=N.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import reasoning_model, sft_config

SCALES = {
    # layers, d_model, heads, operand digits, sft steps, sft batch, grpo steps, prompts per rollout, group, eval
    "tiny": (2, 128, 4, 3, 1_000, 32, 60, 16, 8, 128),
    "full": (12, 768, 12, 8, 10_000, 128, 1_000, 64, 16, 1_024),
}
THINK = 0.3  # the fraction of SFT responses that show the trace
EVAL_EVERY = 5


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"rl_steps scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def kind(arg, think: float) -> str:
    return f"add:digits={SCALES[arg.scale][3]}:think={think}"


def max_new_tokens(arg) -> int:
    return 9 * SCALES[arg.scale][3] + 14  # a full trace (9 tokens a column) + tags + answer, with room to spare


def get_sft_config(arg=None, think: float = THINK):
    arg = _arg(arg)
    layers, d_model, heads, _, steps, batch, *_ = SCALES[arg.scale]
    return sft_config(kind(arg, think), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                      max_new_tokens=max_new_tokens(arg), seed=arg.seed)  # fmt: skip


def get_config(arg=None):
    """The GRPO run (post.base_workdir: where the sft stage writes by default)."""
    arg = _arg(arg)
    layers, d_model, heads, *_, steps, prompts, group, eval_prompts = SCALES[arg.scale]
    c = reasoning_model("grpo", layers=layers, d_model=d_model, heads=heads)
    c.post.update(base_workdir="workdirs/rl_steps/sft", template="chat")
    c.policy.update(prompts="instructions", instruction_tasks=kind(arg, THINK), max_new_tokens=max_new_tokens(arg),
                    rewards="tinyzero", eval_prompts=eval_prompts, eval_samples=2)  # fmt: skip
    c.rl.update(rollout_prompts=prompts, epochs=1, kl_coef=0.0, clip_eps=0.2)
    c.grpo.update(group_size=group, normalize_std=False, loss_aggregation="token")
    rows = prompts * group
    c.train.update(steps=steps, batch_size=rows // 2, eval_every=EVAL_EVERY, checkpoint_every=2 * EVAL_EVERY,
                   log_every=5, seed=arg.seed)  # fmt: skip
    # 1e-3 (the rate of experiments/grpo_verifiable.py) broke the trace's digit copying within 20 steps here:
    # held-out accuracy fell to 0.00 while the fraction of responses that think rose to 0.86 (one seed).
    c.optim.update(learning_rate=2e-4, warmup_steps=0, weight_decay=0.0)
    return c


def get_stages(arg=None):
    return [
        Stage("sft", get_sft_config(arg)),
        Stage("grpo", get_config(arg), inputs={"post.base_workdir": "sft"}),
        Stage("sft_direct", get_sft_config(arg, think=0.0)),
        Stage("grpo_direct", get_config(arg), inputs={"post.base_workdir": "sft_direct"}),
    ]


def _curve(run):
    from research.post.policy import evaluate_start
    from research.train.metrics import read_metrics

    start = {"step": 0, **evaluate_start(run.config)}  # the SFT model, on the same prompts and samples
    evals = [start] + [m for m in read_metrics(run.workdir) if "eval_gold_reward" in m]
    return [dict(step=m["step"], accuracy=m["eval_gold_reward"], thinks=m["eval_thinks"],
                 length=m["eval_response_length"], well_formed=m["eval_well_formed"]) for m in evals]  # fmt: skip


def _forced(run, arg, prompts: int = 200) -> dict:
    """Greedy held-out accuracy of the SFT model made to think (`<think>` forced) and to answer directly."""
    from research.data import instructions
    from research.reason.reasoner import Reasoner
    from research.train.runs import load_run

    reasoner = Reasoner(load_run(run.workdir))
    examples = [instructions.make_example(i, split="eval", seed=0, kinds=(kind(_arg(arg), 0),)) for i in range(prompts)]
    out = {"prompts": prompts}
    for mode in ("think", "direct"):
        answers = reasoner.answer([e.prompt for e in examples], mode=mode, max_new_tokens=max_new_tokens(_arg(arg)))
        out[mode] = float(reasoner.correct(examples, answers).mean())
    return out


ARMS = {"with traces in SFT": "grpo", "no traces in SFT (ablation)": "grpo_direct"}  # curve label -> GRPO stage


def analyze(workdir, runs, arg=None):
    arms = ARMS
    curves = {label: _curve(next(r for r in runs if r.stage == stage)) for label, stage in arms.items()}
    regime = _forced(next(r for r in runs if r.stage == "sft"), arg)
    (workdir / "results.json").write_text(json.dumps(dict(curves=curves, sft_forced=regime), indent=1))
    lines = [
        f"SFT model, greedy on {regime['prompts']} held-out prompts: forced to think {regime['think']:.3f}, "
        f"forced to answer directly {regime['direct']:.3f}.",
        "",
        "| RL step | " + " | ".join(f"{a}: accuracy / thinks / tokens" for a in arms) + " |",
        "|---:|" + "---:|" * len(arms),
    ]
    for i, point in enumerate(next(iter(curves.values()))):
        cells = [f"{c[i]['accuracy']:.3f} / {c[i]['thinks']:.2f} / {c[i]['length']:.1f}" for c in curves.values()]
        lines.append(f"| {point['step']} | " + " | ".join(cells) + " |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(curves, workdir / "rl_steps.png")


def plot_seeds(workdir, merged, arg=None):
    """rl_steps.png again from the seeds' merged curves: means with ± std bands over seeds."""
    del arg
    _plot(merged["curves"], workdir / "rl_steps.png")


def _plot(curves, path):
    """Accuracy, thinking rate and response length vs RL step, one colour per arm in every panel; one seed's
    curves or the seeds' merged ones (± std bands)."""
    from matplotlib.figure import Figure

    from research.stats import plot_band

    colors = {label: f"C{i}" for i, label in enumerate(ARMS)}
    fig = Figure(figsize=(11, 3.5))
    axes = fig.subplots(1, 3)
    for label, curve in curves.items():
        steps = [c["step"] for c in curve]
        for ax, key in zip(axes, ("accuracy", "thinks", "length"), strict=True):
            plot_band(ax, steps, [c[key] for c in curve], color=colors.get(label), label=label)
    labels = (
        ("held-out accuracy (sampled, T=1)", "fraction of responses correct"),
        ("responses that think", "fraction of responses with <think>"),
        ("response length", "tokens per response"),
    )
    for ax, (title, ylabel) in zip(axes, labels, strict=True):
        ax.set(title=title, xlabel="RL step", ylabel=ylabel)
    axes[0].legend(fontsize=7, title="bands: ± std over seeds", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
