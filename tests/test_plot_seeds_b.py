"""plot_seeds of moe_vs_dense, preference_frontier, quantization, rag, react, rl_steps, self_consistency and
tree_of_thoughts: each experiment's plots redrawn from hand-written per-seed results.json merged over seeds
(research.stats.merge_results), and the same plotting function still drawing one seed's plain results.

Matplotlib only: no training, no model, no jax compilation.
"""

import json
import random

import pytest

from research.experiment import load_experiment
from research.stats import merge_results
from tests.test_plot_seeds_a import _summaries  # how many numbers of merged results vary by seed

SEEDS = (0, 1, 2)
MIN_PNG_BYTES = 5_000  # an empty figure of these sizes is smaller; axes, curves and labels make it larger


def _jitter(seed: int):
    """A small seed-dependent perturbation, so the merged numbers vary across seeds."""
    rng = random.Random(seed)
    return lambda scale=0.01: scale * (rng.random() - 0.5)


# --- per-seed results, in the shape each experiment's analyze writes to results.json ------------------------


def moe_vs_dense(seed):
    j, steps = _jitter(seed), (50, 100, 150, 200, 250, 300)
    rows = []
    for i, run in enumerate(("dense", "dense_wide", "moe", "moe_no_aux", "moe_dropless")):
        moe = run.startswith("moe")
        rows.append(
            {
                "run": run,
                "total_params": 1_200_000 + 800_000 * (i > 0),
                "active_params": 1_200_000 + 800_000 * (i == 1),
                "eval_loss": 2.5 - 0.05 * i + j(),
                "eval_curve": [(s, 4.0 - s / 200 - 0.05 * i + j()) for s in steps],
                "tokens_per_sec": 20_000.0 - 2_000 * i + j(100),
                "final_load": [0.125 + j() for _ in range(8)] if moe else None,
                "imbalance": 1.3 + 0.3 * (run == "moe_no_aux") + j() if moe else None,
                "imbalance_curve": [(s, 1.6 - s / 1000 + j()) for s in steps] if moe else [],
                "dropped_fraction": (0.0 if run == "moe_dropless" else 0.02 + j()) if moe else None,
                "aux_loss": 1.01 + j() if moe and run != "moe_no_aux" else (0.0 if moe else None),
                "interleaved_tokens_per_sec": 18_000.0 - 1_500 * i + j(100),
            }
        )
    return rows


def preference_frontier(seed):
    j = _jitter(seed)
    runs = [
        dict(run="base", method="base", beta=None, eval_gold_reward=None, eval_kl=None, eval_reward=None,
             eval_accuracy=None),
        dict(run="rm", method="rm", beta=None, eval_gold_reward=None, eval_kl=None, eval_reward=None,
             eval_accuracy=0.8 + j()),
    ]  # fmt: skip
    for i, method in enumerate(("ppo_rm", "ppo_gold", "dpo")):
        for beta in (0.03, 0.1, 0.3, 1.0):
            runs.append(dict(run=f"{method}/beta={beta}", method=method, beta=beta,
                             eval_gold_reward=0.5 - 0.3 * beta + 0.05 * i + j(), eval_kl=4.0 / (1 + 10 * beta) + j(),
                             eval_reward=1.0 - beta + j(), eval_accuracy=None))  # fmt: skip
    return dict(base={"gold_reward": 0.02 + j(), "samples": 512}, runs=runs)


def quantization(seed):
    j = _jitter(seed)
    mb = {"float32": 4.0, "bfloat16": 2.0, "int8 per-channel": 1.0, "int8 g64": 1.06, "int4 per-channel": 0.5,
          "int4 g64": 0.56, "nf4 g64": 0.56, "nf4 g64 + double quant": 0.52}  # fmt: skip
    formats = [
        dict(format=label, weight_bytes=int(size * 1e6), weight_rel_error=0.0 if i == 0 else 0.01 * i + j(0.001),
             eval_loss=1.5 + 0.01 * i + j(), eval_perplexity=4.5 + 0.05 * i + j(),
             generate_tokens_per_sec=900.0 + j(50))
        for i, (label, size) in enumerate(mb.items())
    ]  # fmt: skip

    def finetune(base_bytes, offset):
        return dict(eval_loss_before=2.0 + offset + j(), eval_loss_after=1.2 + offset + j(),
                    train_curve=[(s, 2.0 - s / 100 + offset + j(0.05)) for s in range(1, 101)],
                    base_bytes=base_bytes, trainable_params=16_384)  # fmt: skip

    return dict(formats=formats, finetune={"LoRA (float32 base)": finetune(4_000_000, 0.0),
                                           "QLoRA (NF4 base)": finetune(520_000, 0.02)})  # fmt: skip


def rag(seed):
    j = _jitter(seed)

    def cell(mean, std=0.05):
        return [mean + j(), std + j(0.005)]

    summary = {"closed_book": {"exact_match": cell(0.04), "recall": None}}
    for n_c in (3, 6, 12):
        summary[f"oracle/n_c={n_c}"] = {"exact_match": cell(0.5), "recall": [1.0, 0.0]}
        for name in ("bm25", "dense"):
            for k in (1, 2, 3):
                summary[f"{name}/n_c={n_c}/k={k}"] = {"exact_match": cell(0.1 * k), "recall": cell(0.5 + 0.1 * k)}
    for position in ("first", "middle", "last"):
        summary[f"position={position}"] = {"exact_match": cell(0.3), "recall": [1.0, 0.0]}
    summary["chance"] = {"exact_match": [0.037, 0.0], "recall": None}
    # analyze's per_world has the same keys with plain numbers; two worlds are enough for the shape
    per_world = [{k: {m: (None if v is None else v[0]) for m, v in c.items()} for k, c in summary.items()}] * 2
    return {"summary": summary, "per_world": per_world}


REACT_SETS = ("seen world, two-step", "seen world, single-hop", "unseen world, two-step")
REACT_KEYS = ("direct", "success", "steps", "wasted_calls", "loops", "step_limit", "well_formed", "known_tool",
              "right_tool", "right_args", "answer_extracted")  # fmt: skip


def react(seed):
    j = _jitter(seed)
    summary = {
        name: {k: {"mean": 0.3 + 0.05 * i + j(), "std": 0.02 + j(0.002)} for i, k in enumerate(REACT_KEYS)}
        for name in REACT_SETS
    }
    per_draw = [
        {name: {"direct": 0.2 + j(), "trajectory": {k: 0.3 + j() for k in REACT_KEYS[1:6]},
                "component": {k: 0.5 + j() for k in REACT_KEYS[6:]}, "example": "Question: ...\nThought: ..."}
         for name in REACT_SETS}
        for _ in range(3)
    ]  # fmt: skip
    return {"summary": summary, "per_seed": per_draw, "questions_per_set": 32, "max_steps": 6}


def rl_steps(seed):
    j = _jitter(seed)

    def curve(rise):
        return [dict(step=s, accuracy=0.3 + rise * s / 60 + j(), thinks=0.25 + rise * s / 60 + j(),
                     length=12.0 + 10 * rise * s / 60 + j(1.0), well_formed=0.98 + j(0.01))
                for s in range(0, 61, 5)]  # fmt: skip

    return dict(curves={"with traces in SFT": curve(0.5), "no traces in SFT (ablation)": curve(0.02)},
                sft_forced={"prompts": 200, "think": 0.995 + j(0.005), "direct": 0.1 + j()})  # fmt: skip


def self_consistency(seed):
    j = _jitter(seed)
    ns = (1, 2, 4, 8, 16, 32)
    results = {"0.0": {"maj@1": 0.4 + j(), "pass@1": 0.4 + j(), "distinct_answers": 1.0, "well_formed": 1.0}}
    for t in (0.5, 1.0, 1.5):
        r = {}
        for n in ns:
            r[f"maj@{n}"] = 0.35 + 0.02 * n**0.5 / t + j()
            r[f"pass@{n}"] = min(1.0, 0.35 + 0.1 * n**0.5 * t) + j()
        r.update({"pass@1": 0.35 + j(), "distinct_answers": 2.0 * t + j(0.1), "well_formed": 0.97 + j()})
        results[str(t)] = r
    return results


def tree_of_thoughts(seed):
    j, budgets = _jitter(seed), (4, 8, 16)
    rows = {"CoT, greedy (1 call)": {1: 0.2 + j()}}
    rows["CoT + verifier (pass@C)"] = {c: 0.3 + 0.03 * c + j() for c in budgets}
    rows["self-consistency (majority trace)"] = {c: 0.25 + 0.01 * c + j() for c in budgets}
    rows["ToT"] = {c: 0.3 + 0.02 * c + j() for c in budgets}
    rows["ToT calls spent (mean)"] = {c: 0.9 * c + j() for c in budgets}
    return rows  # int keys, as analyze holds them; results.json has them as strings


# --- the tests ---------------------------------------------------------------------------------------------

# experiment -> (per-seed results, png names, the shared plot function drawn on one seed's results as analyze does)
CASES = {
    "moe_vs_dense": (moe_vs_dense, ("moe_vs_dense.png",), lambda m, r, d: m._plot(r, d / "moe_vs_dense.png")),
    "preference_frontier": (preference_frontier, ("frontier.png",),
                            lambda m, r, d: m._plot(r["runs"], r["base"], d / "frontier.png")),
    "quantization": (quantization, ("quantization.png",),
                     lambda m, r, d: m._plot(r["formats"], r["finetune"], d / "quantization.png")),
    "rag": (rag, ("rag.png",), lambda m, r, d: m.plot(r["summary"], d / "rag.png")),
    "react": (react, ("react.png",), lambda m, r, d: m._plot(r["summary"], d / "react.png")),
    "rl_steps": (rl_steps, ("rl_steps.png",), lambda m, r, d: m._plot(r["curves"], d / "rl_steps.png")),
    "self_consistency": (self_consistency, ("self_consistency.png",),
                         lambda m, r, d: m._plot(r, d / "self_consistency.png")),
    "tree_of_thoughts": (tree_of_thoughts, ("tree_of_thoughts.png",),
                         lambda m, r, d: m._plot(r, d / "tree_of_thoughts.png")),
}  # fmt: skip


def _merged(build):
    """The seeds' results as merge_seeds sees them (read back from results.json), merged."""
    return merge_results({seed: json.loads(json.dumps(build(seed))) for seed in SEEDS})


def _assert_pngs(directory, names):
    for name in names:
        path = directory / name
        assert path.exists(), f"{name} not written"
        assert path.stat().st_size > MIN_PNG_BYTES, f"{name} is only {path.stat().st_size} bytes"


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_seeds_draws_merged_results(name, tmp_path):
    build, pngs, _ = CASES[name]
    module, _ = load_experiment(f"experiments/{name}.py")
    merged = _merged(build)
    assert _summaries(merged) > 0, "the hand-written seeds should differ, so the plot gets error bars"
    module.plot_seeds(tmp_path, merged)
    _assert_pngs(tmp_path, pngs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_plot_still_draws_one_seed(name, tmp_path):
    build, pngs, plot_one = CASES[name]
    module, _ = load_experiment(f"experiments/{name}.py")
    plot_one(module, build(0), tmp_path)  # in-memory, as analyze passes them (tuples, int keys)
    _assert_pngs(tmp_path, pngs)


@pytest.mark.parametrize("name", ["rag", "react"])
def test_one_seed_merged_draws_too(name, tmp_path):
    """A merge of one seed has no summaries at all: every cell plain, zero-width bars over seeds."""
    build, pngs, _ = CASES[name]
    module, _ = load_experiment(f"experiments/{name}.py")
    merged = merge_results({0: json.loads(json.dumps(build(0)))})
    assert _summaries(merged) == 0
    module.plot_seeds(tmp_path, merged)
    _assert_pngs(tmp_path, pngs)


def test_quantization_difference_band_is_paired():
    """The QLoRA - LoRA band is the spread of per-seed differences, not of either run's loss."""
    module, _ = load_experiment("experiments/quantization.py")
    a = {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    b = {"mean": 1.9, "std": 1.0, "n": 3, "values": [0.9, 1.9, 2.9]}
    mean, std = module._paired_difference(a, b)
    assert mean == pytest.approx(0.1) and std == pytest.approx(0.0, abs=1e-12)
    assert module._paired_difference(2.0, 1.5) == (0.5, 0.0)
    mean, std = module._paired_difference(a, 1.0)
    assert mean == pytest.approx(1.0) and std == pytest.approx(1.0)
