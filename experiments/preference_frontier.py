r"""The reward-KL frontier of preference tuning (the DPO paper's IMDb experiment, Fig. 2 left), on the toy language.

  python -m research.sweep --config experiments/preference_frontier.py --workdir workdirs/preference_frontier

Stages (research/experiment.py), all on the toy sentiment language
(research/data/sentiment.py: a bigram chain whose hidden half of words is
positive; gold reward (#positive - #negative) / #words of a continuation):
  base      "SFT": a small LM trained on the language's documents (word tokenizer)
  rm        a reward model on preference pairs labelled by Bradley-Terry draws on
            the gold reward (train.task=reward, initialised from base)
  ppo_rm    PPO with the learned RM as reward, per beta (rl.kl_coef)
  ppo_gold  PPO with the gold reward itself, per beta
  dpo       DPO on the same pairs, per beta (dpo.beta)
Every policy starts at base and is kept close to it; each is evaluated on
held-out prompts from policy.eval_prompts x policy.eval_samples samples
(512 at tiny scale): mean gold reward of the fixed-length continuation and
KL(policy || base) per sequence. analyze() writes results.md, results.json and
frontier.png (gold reward vs KL, one colour per method, betas labelled).

Sizes: the tiny scale was chosen so that the base's continuations score near 0
(the language's mean) and a tuned policy can reach far above without hitting
the ceiling of 1 within its budget, and so the whole file runs in about ten
minutes on 2 CPU cores. Arguments: scale=tiny|full, seed=N.
"""

import json

from research.config import parse_arg, swiglu_mlp_dim
from research.experiment import Stage
from research.train.tasks import task_config

BETAS = (0.03, 0.1, 0.3, 1.0)
SCALES = {
    # layers, d_model, heads, batch, base steps, rm steps, ppo steps, dpo steps, pairs, eval prompts
    "tiny": (2, 64, 4, 32, 300, 150, 48, 100, 4096, 128),
    "full": (12, 768, 12, 128, 20_000, 2_000, 1_000, 2_000, 100_000, 1_024),
}
PROMPT_WORDS, CONTINUATION_WORDS = 4, 12


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"preference_frontier scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def _config(arg, task, steps):
    layers, d_model, heads, batch, *_ = SCALES[arg.scale]
    c = task_config(task)
    c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, num_kv_heads=heads, ffn="swiglu",
                   norm="rmsnorm", mlp_dim=swiglu_mlp_dim(d_model))  # fmt: skip
    c.data.update(name="toy_sentiment", tokenizer="word", vocab_size=64, seq_len=64, tokenizer_sample_bytes=1_000_000)
    c.train.update(steps=steps, batch_size=batch, eval_every=steps, checkpoint_every=steps,
                   log_every=max(steps // 10, 1), eval_batches=4, seed=arg.seed)  # fmt: skip
    c.optim.update(learning_rate=2e-3, warmup_steps=min(50, steps // 10), weight_decay=0.0)
    return c


def _post(c, arg):
    *_, pairs, eval_prompts = SCALES[arg.scale]
    c.post.base_workdir = "workdirs/preference_frontier/base"  # for research.main; the stages pass their own
    if "preference" in c:
        c.preference.update(num_train_pairs=pairs, num_eval_pairs=512, prompt_words=PROMPT_WORDS,
                            continuation_words=CONTINUATION_WORDS)  # fmt: skip
    if "policy" in c:
        c.policy.update(prompt_words=PROMPT_WORDS, max_new_tokens=CONTINUATION_WORDS, min_new_tokens=CONTINUATION_WORDS,
                        eval_prompts=eval_prompts, eval_samples=4)  # fmt: skip
    return c


def get_base_config(arg=None):
    arg = _arg(arg)
    return _config(arg, "lm", SCALES[arg.scale][4])


def get_rm_config(arg=None):
    arg = _arg(arg)
    return _post(_config(arg, "reward", SCALES[arg.scale][5]), arg)


def get_ppo_config(arg=None):
    arg = _arg(arg)
    c = _post(_config(arg, "ppo", SCALES[arg.scale][6]), arg)
    c.rl.update(rollout_prompts=c.train.batch_size, epochs=2)
    c.train.update(checkpoint_every=c.train.steps, eval_every=c.train.steps)
    c.optim.update(learning_rate=1e-3, warmup_steps=0)
    return c


def get_dpo_config(arg=None):
    arg = _arg(arg)
    c = _post(_config(arg, "dpo", SCALES[arg.scale][7]), arg)
    c.optim.update(learning_rate=1e-3, warmup_steps=10)
    return c


def get_config(arg=None):
    """The DPO run (its keys include every post-training section); --config.* overrides apply to every stage."""
    return get_dpo_config(arg)


def get_stages(arg=None):
    base = {"post.base_workdir": "base"}
    return [
        Stage("base", get_base_config(arg)),
        Stage("rm", get_rm_config(arg), inputs=base),
        Stage(
            "ppo_rm",
            get_ppo_config(arg),
            inputs={**base, "policy.reward_workdir": "rm"},
            sweep=tuple({"policy.rewards": "reward_model", "rl.kl_coef": b} for b in BETAS),
        ),  # fmt: skip
        Stage("ppo_gold", get_ppo_config(arg), inputs=base, sweep=tuple({"rl.kl_coef": b} for b in BETAS)),
        Stage("dpo", get_dpo_config(arg), inputs=base, sweep=tuple({"dpo.beta": b} for b in BETAS)),
    ]


def _final_eval(workdir) -> dict:
    from research.train.metrics import read_metrics

    evals = [m for m in read_metrics(workdir) if "eval_gold_reward" in m or "eval_accuracy" in m]
    return evals[-1] if evals else {}


def analyze(workdir, runs, arg=None):
    rows = []
    for run in runs:
        final = _final_eval(run.workdir)
        beta = run.overrides.get("rl.kl_coef", run.overrides.get("dpo.beta"))
        rows.append(dict(run=run.name, method=run.stage, beta=beta, **{k: final.get(k) for k in (
            "eval_gold_reward", "eval_kl", "eval_reward", "eval_accuracy")}))  # fmt: skip
    base = _base_point(workdir / "base", runs)
    (workdir / "results.json").write_text(json.dumps(dict(base=base, runs=rows), indent=1))
    rm = next((r for r in rows if r["method"] == "rm"), None)
    lines = [
        f"Base (SFT) policy: gold reward {base['gold_reward']:.3f} on {base['samples']} held-out samples (KL 0).",
        f"Reward model: held-out pair accuracy {rm['eval_accuracy']:.3f} (agreement with the gold preference)."
        if rm and rm["eval_accuracy"] is not None
        else "",
        "",
        "| method | beta | gold reward | KL(pi \\|\\| base) per sequence | reward optimised |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["method"] in ("ppo_rm", "ppo_gold", "dpo"):
            lines.append(f"| {r['method']} | {r['beta']} | {_f(r['eval_gold_reward'])} | {_f(r['eval_kl'])} | "
                         f"{_f(r['eval_reward'])} |")  # fmt: skip
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, base, workdir / "frontier.png")


def _f(v):
    return "" if v is None else f"{v:.3f}"


def _base_point(base_dir, runs) -> dict:
    """The base policy's gold reward on the same eval prompts and sample count as the tuned policies."""
    import jax
    import numpy as np

    from research.decode import sample
    from research.post import policy as policy_lib
    from research.post import prompts as prompts_lib
    from research.train.runs import load_run

    config = next(r.config for r in runs if r.stage == "dpo")
    run = load_run(base_dir)
    prompt_set = prompts_lib.prompt_set(config.policy, config.train.seed)
    prompts = prompt_set.prompts("eval", config.policy.eval_prompts)
    encoded = [prompts_lib.prompt_tokens(run.tokenizer, "plain", p.text).tolist() for p in prompts]
    samples = sample(run.model, run.params, encoded, policy_lib.sampling_config(config, eval=True),
                     jax.random.fold_in(jax.random.key(config.train.seed), 7_000_003))  # fmt: skip
    rows = [prompts[i] for i in np.asarray(samples.prompt_index)]
    texts = [prompts_lib.response_text(run.tokenizer, "plain", r) for r in samples.responses()]
    gold = [prompt_set.gold(p, t) for p, t in zip(rows, texts, strict=True)]
    return {"gold_reward": float(np.mean(gold)), "samples": len(gold)}


METHODS = {"ppo_rm": "PPO, learned RM", "ppo_gold": "PPO, gold reward", "dpo": "DPO"}  # plot order and labels


def plot_seeds(workdir, merged, arg=None):
    """frontier.png again from the seeds' merged results: mean points with ± std error bars in KL and reward."""
    del arg
    _plot(merged["runs"], merged["base"], workdir / "frontier.png")


def _plot(rows, base, path):
    """Gold reward vs KL, one colour per method, betas labelled; merged rows get ± std error bars."""
    from matplotlib.figure import Figure

    from research.stats import mean_err

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (method, label) in enumerate(METHODS.items()):
        points = sorted((*mean_err(r["eval_kl"]), *mean_err(r["eval_gold_reward"]), r["beta"]) for r in rows
                        if r["method"] == method and r["eval_kl"] is not None)  # fmt: skip
        if not points:
            continue
        kl, kl_err, gold, gold_err, betas = zip(*points, strict=True)
        ax.errorbar(kl, gold, xerr=kl_err, yerr=gold_err, fmt="o-", capsize=3, color=f"C{i}", label=label)
        for x, y, beta in zip(kl, gold, betas, strict=True):
            ax.annotate(f"{beta}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    base_mean, base_std = mean_err(base["gold_reward"])
    ax.axhline(base_mean, color="grey", ls=":", label="base (SFT)")
    ax.axhspan(base_mean - base_std, base_mean + base_std, color="grey", alpha=0.2, lw=0)
    ax.set_xlabel("KL(policy || base), nats per sequence")
    ax.set_ylabel("gold reward of held-out continuations\n((#pos - #neg) / #words, in [-1, 1])")
    ax.set_title("Reward vs KL frontier (labels: beta; bars: ± std over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
