r"""Best-of-N against reward-model over-optimisation (Gao et al. 2023), on the toy sentiment language.

  python -m research.sweep --config experiments/best_of_n.py --workdir workdirs/best_of_n

Stages: `base` ("SFT": a small LM on the language), then `rm`, one reward model per
label-noise level of its training pairs (0, 10 and 30 % of labels flipped). analyze()
samples a pool of POOL continuations per held-out prompt from the base and, for
N = 1, 2, 4, ..., 64, computes in closed form (research/post/best_of_n.py) the
gold reward of the response each scorer would pick among N i.i.d. draws: the oracle
(the gold reward itself), each learned RM, and random choice (any N: the base's mean).
Beside each: KL(best-of-N || base) measured from the pool's score distribution,
and the analytic log N - (N - 1) / N. Writes results.md, results.json, best_of_n.png.

What to expect: the oracle's pick keeps improving with N; a noisy RM's pick improves
less and may flatten or fall at large N, where it picks what the RM over-rates.
Sizes: the pool (256 per prompt, 128 prompts) is 4x the largest N, and the RMs are
trained briefly enough that they are imperfect; the whole file runs in a few minutes
on 2 CPU cores. Arguments: scale=tiny|full, seed=N.
"""

import json
import os

from research.config import parse_arg
from research.experiment import Stage, load_experiment

# The same language, models and sizes as the frontier experiment (loaded by path: experiments/ is no package).
pf, _ = load_experiment(os.path.join(os.path.dirname(os.path.abspath(__file__)), "preference_frontier.py"))

NOISE = (0.0, 0.1, 0.3)
NS = (1, 2, 4, 8, 16, 32, 64)
POOL = {"tiny": 256, "full": 1024}
CHUNK_PROMPTS = 16  # prompts sampled per sampler call (POOL rows each)


def _arg(arg):
    return pf._arg(arg)


def get_config(arg=None):
    """A reward model's config (--config.* overrides apply to every stage that has the key)."""
    return pf.get_rm_config(arg)


def get_stages(arg=None):
    return [
        Stage("base", pf.get_base_config(arg)),
        Stage(
            "rm",
            pf.get_rm_config(arg),
            inputs={"post.base_workdir": "base"},
            sweep=tuple({"preference.label_noise": n} for n in NOISE),
        ),  # fmt: skip
    ]


def _pool(workdir, config, arg):
    """(prompt rows, base Samples of POOL continuations per eval prompt, decoded texts, gold rewards)."""
    import jax
    import numpy as np

    from research.decode import SamplingConfig, sample
    from research.post import prompts as prompts_lib
    from research.train.runs import load_run

    base = load_run(workdir / "base")
    pool = POOL[parse_arg(arg, scale="tiny", seed=0).scale]
    prompt_set = prompts_lib.SentimentPrompts(pf.PROMPT_WORDS, config.train.seed)
    prompts = prompt_set.prompts("eval", pf.SCALES[_arg(arg).scale][-1])
    n = pf.CONTINUATION_WORDS
    sampling = SamplingConfig(max_new_tokens=n, min_new_tokens=n, temperature=1.0, num_samples=pool)
    chunks = []
    for start in range(0, len(prompts), CHUNK_PROMPTS):
        part = prompts[start : start + CHUNK_PROMPTS]
        encoded = [prompts_lib.prompt_tokens(base.tokenizer, "plain", p.text).tolist() for p in part]
        chunks.append(sample(base.model, base.params, encoded, sampling, jax.random.key(1_000 + start)))
    texts = [prompts_lib.response_text(base.tokenizer, "plain", r) for c in chunks for r in c.responses()]
    gold = np.array([prompt_set.gold(None, t) for t in texts]).reshape(len(prompts), pool)
    return prompts, chunks, gold


def analyze(workdir, runs, arg=None):
    import numpy as np

    from research.post import best_of_n as bon
    from research.post.rewards import RewardModel
    from research.train.runs import load_run

    rms = [r for r in runs if r.stage == "rm"]
    prompts, chunks, gold = _pool(workdir, rms[0].config, arg)
    scorers = {"oracle (gold)": gold}
    accuracy = {}
    for run in rms:
        model = RewardModel(load_run(run.workdir))
        scores = np.concatenate([np.asarray(model.score(c)) for c in chunks]).reshape(gold.shape)
        noise = run.overrides["preference.label_noise"]
        scorers[f"RM, {noise:.0%} label noise"] = scores
        accuracy[noise] = pf._final_eval(run.workdir).get("eval_accuracy")
    table = []
    for n in NS:
        row = {"n": n, "analytic_kl": bon.analytic_kl(n), "random": float(gold.mean())}
        for name, scores in scorers.items():
            row[name] = float(np.mean([bon.expected_value(s, g, n) for s, g in zip(scores, gold, strict=True)]))
            row[f"{name} kl"] = float(np.mean([bon.measured_kl(s, n) for s in scores]))
        table.append(row)
    (workdir / "results.json").write_text(json.dumps(dict(rm_accuracy=accuracy, table=table), indent=1))
    names = list(scorers)
    lines = [
        f"Pool: {gold.shape[1]} base continuations x {gold.shape[0]} held-out prompts; gold reward of the pick "
        "(mean over prompts); KL(best-of-N || base) measured from each scorer's pool distribution.",
        "RM held-out pair accuracy (vs the gold preference): "
        + ", ".join(f"{k:.0%} noise {v:.3f}" for k, v in accuracy.items() if v is not None),
        "",
        "| N | log N - (N-1)/N | " + " | ".join(f"{n} | KL" for n in names) + " | random |",
        "|---:|---:|" + "---:|---:|" * len(names) + "---:|",
    ]
    for row in table:
        cells = " | ".join(f"{row[n]:.3f} | {row[n + ' kl']:.3f}" for n in names)
        lines.append(f"| {row['n']} | {row['analytic_kl']:.3f} | {cells} | {row['random']:.3f} |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(table, workdir / "best_of_n.png")


def plot_seeds(workdir, merged, arg=None):
    """best_of_n.png again from every seed's table: mean curves with ± std bands over seeds."""
    del arg
    _plot(merged["table"], workdir / "best_of_n.png")


def _plot(table, path):
    """Left: gold reward of each scorer's pick vs analytic KL; right: measured vs analytic KL per N.

    The scorers are the table's columns that have a " kl" twin, in order; each keeps its colour in both panels."""
    from matplotlib.figure import Figure

    from research.stats import plot_band

    names = [k for k in table[0] if f"{k} kl" in table[0]]
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    kl = [r["analytic_kl"] for r in table]
    ns = [r["n"] for r in table]
    for name in names:
        plot_band(left, kl, [r[name] for r in table], color=colors[name], label=name)
        plot_band(right, ns, [r[name + " kl"] for r in table], color=colors[name], label=name)
    plot_band(left, kl, [r["random"] for r in table], "--", color="grey", label="random choice")
    right.plot(ns, kl, "k--", label="log N - (N-1)/N")
    left.set_xlabel("KL(best-of-N || base), analytic (nats)")
    left.set_ylabel("gold reward of the pick (mean over prompts)")
    left.set_title("Best-of-N: gold reward of what each scorer picks", fontsize=10)
    right.set_xscale("log", base=2)
    right.set_xlabel("N (samples per prompt)")
    right.set_ylabel("KL(best-of-N || base) (nats)")
    right.set_title("measured vs analytic KL (bands: ± std over seeds)", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
