"""plot_seeds of the experiments whose analyze writes a table or curves: each redraws its png(s) from results
merged over seeds (research.stats.merge_results), and the same plot function still takes one seed's results.

The per-seed results are hand-written in the shape each analyze() writes to results.json (JSON's string keys
included) and differ slightly by seed; nothing trains or compiles.
"""

import json

import pytest

from research.experiment import load_experiment
from research.stats import is_summary, merge_results

SEEDS = (0, 1, 2)


# Settings, not measurements: the same in every seed's results.
FIXED = {"temperature", "alpha", "analytic_kl", "n", "step", "value", "trainable_params"}


def _jitter(x, seed):
    """x with every measured float nudged by seed (settings, ints, strings, None kept): one seed's results."""
    if isinstance(x, dict):
        return {k: v if k in FIXED else _jitter(v, seed) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jitter(v, seed) for v in x]
    if isinstance(x, float):
        return x * (1 + 0.02 * seed) + 0.001 * seed
    return x


def _per_seed(results):
    """{seed: results as one seed's results.json holds them}: JSON round trip, then jittered per seed."""
    return {seed: _jitter(json.loads(json.dumps(results)), seed) for seed in SEEDS}


def _attention_variants():
    rows = [
        dict(variant=v, lm_loss=2.1 + 0.1 * i, tokens_per_sec=5e4 / (i + 1), temp_mib=12.0 + i,
             recall_loss=3.0 - 0.2 * i, recall_accuracy=0.1 + 0.1 * i)
        for i, v in enumerate(["dense", "blockwise", "sliding", "block_sparse", "strided", "performer"])
    ]  # fmt: skip
    rows[0]["temp_mib"] = 12  # an int equal in every seed: stays a plain number when merged
    return rows


def _best_of_n():
    names = ["oracle (gold)", "RM, 0% label noise", "RM, 10% label noise", "RM, 30% label noise"]
    table = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        row = {"n": n, "analytic_kl": 0.1 * n, "random": 0.5}
        for i, name in enumerate(names):
            row[name] = 0.5 + 0.01 * n / (i + 1)
            row[f"{name} kl"] = 0.09 * n
        table.append(row)
    return {"rm_accuracy": {"0.0": 0.9, "0.1": 0.8, "0.3": 0.65}, "table": table}


def _cot_length():
    rows = [dict(method="cap", value=0, accuracy=0.2, thinking=0.0)]
    rows += [dict(method="cap", value=9 * j - 1, accuracy=0.2 + 0.18 * j, thinking=9.0 * j - 1.5) for j in range(1, 5)]
    rows += [dict(method="waits", value=m, accuracy=0.95 - 0.01 * m, thinking=35.0 + 3 * m) for m in (0, 1, 2, 4)]
    return rows


def _cot_vs_direct():
    def by_digits(drop):
        thinks = drop < 0.05
        return {d: dict(accuracy=max(0.0, 0.95 - drop * d), thinks=float(thinks), tokens=2.0 + d * (1 + 9 * thinks))
                for d in (2, 4, 6, 8)}  # fmt: skip

    return {"with traces (CoT)": by_digits(0.01), "direct": by_digits(0.12)}


def _distillation():
    sweep = [(None, 0.0, "hard"), (1.0, 1.0, "soft"), (2.0, 1.0, "soft"), (4.0, 1.0, "soft"), (2.0, 0.5, "soft + hard")]
    return [
        dict(name="task=lm" if t is None else f"temperature={t},alpha={a}", labels=labels, temperature=t, alpha=a,
             eval_loss=2.0 - 0.01 * i, eval_kl=None if t is None else 0.1 + 0.01 * i,
             curve=[(s, 3.0 - s / 200 - 0.01 * i) for s in (75, 150, 225, 300)])
        for i, (t, a, labels) in enumerate(sweep)
    ]  # fmt: skip


def _grpo_verifiable():
    return {
        "eval": [dict(step=s, accuracy=0.25 + s / 600, kl=0.01 * s, length=4.0 + s / 300) for s in range(0, 301, 25)],
        "sft": [{"step": 145, "exact_match": 0.5, "eval_loss": 1.2}],
        "rollouts": [
            dict(step=s, reward=0.3 + s / 600, tied_groups=0.4 - s / 1000, kl=0.002 * s, response_length=5.0)
            for s in range(10, 301, 10)
        ],  # fmt: skip
    }


def _judge_bias():
    def cell(x):
        return {"mean": x, "std": 0.01 + x / 20}

    keys = [
        "consistency", "first_win_rate", "agreement_one_order", "agreement_swap_averaged", "verbosity_filler",
        "verbosity_filler_mean_p", "verbosity_filler_penalized", "length_weight_filler", "agreement_penalized_filler",
        "verbosity_repeat", "verbosity_repeat_mean_p", "verbosity_repeat_penalized", "length_weight_repeat",
        "agreement_penalized_repeat", "prefers_g", "prefers_g_mean_p", "prefers_h", "prefers_h_mean_p",
        "self_preference", "self_preference_mean_p", "other_base_mean_p", "other_base_preference",
    ]  # fmt: skip
    judges = {}
    for i, name in enumerate(["balanced, base G", "skewed, base G", "balanced, base H", "skewed, base H"]):
        judges[name] = {k: cell(0.3 + 0.05 * i + 0.01 * j) for j, k in enumerate(keys)}
        judges[name].update(text_agreement=0.5, text_failures=0.1 * i, justification_right=0.7,
                            justification_example="4 + 8 = 12.")  # fmt: skip
    judges["skewed, base G"]["first_win_rate"] = {"mean": 1, "std": 0}  # ints: not nudged, so merged plain
    return {
        "generator_accuracy": {"g": 0.9, "h": 0.85},
        "generator_examples": {
            "g": ["The answer is 3.", "The answer is 7."],
            "h": ["It comes to 3.", "It comes to 7."],
        },
        "judges": judges,
        "rouge": {k: {"agreement": cell(0.8), "correlation": cell(0.6)} for k in ("rouge1", "rouge2", "rougeL")},
    }


def _lora_rank():
    names = ["full", *(f"{m}_r{r}" for m in ("lora", "lora_all") for r in (1, 2, 4, 8, 16, 64)), "prefix", "adapter"]
    return [
        dict(name=n, trainable_params=10_000_000 if n == "full" else 1_000 * (i + 1), exact_match=0.3 + 0.05 * i,
             per_kind={"uppercase": 0.4 + 0.03 * i, "reverse": 0.1 + 0.02 * i}, eval_loss=1.5 - 0.05 * i,
             step_seconds=0.2 + 0.01 * i, step_memory_bytes=50_000_000 + 1_000 * i)
        for i, n in enumerate(names)
    ]  # fmt: skip


CASES = {
    "attention_variants": (_attention_variants, ["attention_variants.png"]),
    "best_of_n": (_best_of_n, ["best_of_n.png"]),
    "cot_length": (_cot_length, ["cot_length.png"]),
    "cot_vs_direct": (_cot_vs_direct, ["cot_vs_direct.png"]),
    "distillation": (_distillation, ["distillation.png"]),
    "grpo_verifiable": (_grpo_verifiable, ["grpo_verifiable.png"]),
    "judge_bias": (_judge_bias, ["judge_bias.png"]),
    "lora_rank": (_lora_rank, ["lora_rank.png"]),
}
# The shared plot function called on one seed's results: (results -> its argument, png name).
ONE_SEED = {
    "best_of_n": lambda results: results["table"],
}


def _summaries(x):
    """How many summary dicts x holds: the merged results really carry spreads for the plot to draw."""
    if is_summary(x):
        return 1
    if isinstance(x, dict):
        return sum(_summaries(v) for v in x.values())
    if isinstance(x, list):
        return sum(_summaries(v) for v in x)
    return 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_seeds_draws_the_merged_results(name, tmp_path):
    make, pngs = CASES[name]
    merged = merge_results(_per_seed(make()))
    assert _summaries(merged) > 0
    module, _ = load_experiment(f"experiments/{name}.py")
    module.plot_seeds(tmp_path, merged)
    for png in pngs:
        assert (tmp_path / png).stat().st_size > 5_000, png


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_plot_takes_one_seeds_results(name, tmp_path):
    make, pngs = CASES[name]
    module, _ = load_experiment(f"experiments/{name}.py")
    for results in (make(), _per_seed(make())[1]):  # as analyze() holds them, and as read back from results.json
        path = tmp_path / pngs[0]
        path.unlink(missing_ok=True)
        module._plot(ONE_SEED.get(name, lambda r: r)(results), path)
        assert path.stat().st_size > 5_000
