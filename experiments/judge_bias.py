r"""LLM-as-a-judge: position, verbosity and self-preference biases, before and after their mitigations;
judge-gold agreement next to ROUGE-gold agreement.

  python -m research.sweep --config experiments/judge_bias.py --workdir workdirs/judge_bias

Everything is generated here (research/apps/judge_data.py): questions "What is a + b?", answers in
five styles, possibly padded; a pair is a correct and a wrong answer, so the gold preference is
known and agreement with it plays the part of agreement with human raters.

Stages:
  gen_g, gen_h   two generator bases, SFT from scratch (different seeds) on answering the questions,
                 G in the style "The answer is 12.", H in "It comes to 12.";
  judge_g, judge_h  judges fine-tuned from each base on pairs ("A"/"B", then "Because 4 + 8 = 12."),
                 two data sets each: `balanced` (no cue but correctness) and `skewed`, with a bias
                 planted on purpose: the correct answer shown first 75 % of the time, the padded
                 one 75 % of the time when one is padded, and in the judge's own base's style 75 %
                 of the time (the familiarity a large model has with its own outputs, which a tiny
                 one lacks). The skewed judges show that the probes and mitigations find and remove
                 a bias that is there.
analyze() reads every judge's verdict from its choice-token probabilities (research/apps/judge.py,
`Judge.from_run`: the code any decoder run or an HF-imported checkpoint goes through) and reports,
over EVAL_SEEDS draws of the held-out probe pairs (mean and spread):
  position     consistency under swapping and first-position win rate on gold pairs in both
               orders; agreement with gold in one order vs swap-averaged (mitigation 1);
  verbosity    how often a padded copy (filler sentence, or the answer said twice) beats the same
               answer unpadded (swap-averaged, so position is out), before and after a length
               penalty whose per-token weight is chosen on the "val" probe pairs (mitigation 2),
               with gold agreement before and after to show what the penalty costs;
  self-pref.   how often the judge prefers generator X's answer over a third source's answer stating the
               same value (so equally correct: a template in another style of about the same length),
               swap-averaged, for a judge from X's base ("self") and from the other base (mitigation 3,
               "other base");
  ROUGE        ROUGE-1/2/L F1 against the reference solution "a + b = v" as a judge: agreement with
               gold and the correlation of its score difference with the gold sign, next to the
               judge's; plus the text path (a generated, parsed verdict; no verdict = a failure)
               and whether the justification states the right sum.
Writes results.md, results.json, judge_bias.png.

Sizes (tiny): 2 layers x 128, byte-level (research/reason/recipes.py), seq_len 128 (a judge example
is at most 127 bytes with the compact judge_data.TEMPLATE; the library's longer default template
needed 256 and twice the time per step). One-digit sums: the judge must add and compare. A first run
with 100-step generators and 250-step judges left the generators at 0.11 accuracy and every judge at
chance on gold (0.46-0.50, only the planted position cue learned); 300 generator steps bring the
generators to 0.85-1.0, and the judges get 600 steps. The whole file then takes about 20 minutes on
2 shared cores (roughly half that alone).
What the tiny run showed (one training seed): the verdict-first judges did not learn correctness
(gold agreement 0.44-0.55) though their justifications, written after the verdict, state the right
sum up to 0.72 of the time: a verdict-first judge must compare before it has computed. The planted
skews were found (first-position win rate 1.0 / 0.83, mean P(own base's answer) 0.90 for the skewed
H judge vs 0.50 from the other base) and removed by their mitigations; the balanced judges' leans are
~1e-4 in probability, so their win rates (0 or 1) are signs of noise, not biases. ROUGE-1/L against
the reference agreed with gold 0.85 of the time.
Arguments: scale=tiny|full, seed=N.
"""

import json

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config

SCALES = {
    # layers, d_model, heads, generator steps, judge steps, batch, probe pairs per set
    "tiny": (2, 128, 4, 300, 600, 16, 100),
    "full": (12, 768, 12, 3000, 10_000, 64, 1000),
}
SEQ_LEN = 128
EVAL_SEEDS = (0, 1, 2)
BALANCED = "judge"
SKEW = 75


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"judge_bias scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def _styles():
    from research.apps import judge_data

    return {"g": judge_data.G_STYLE, "h": judge_data.H_STYLE}


def skewed_kind(own_style: int) -> str:
    return f"judge:first={SKEW}:longer={SKEW}:pad=50:own={own_style}:ownrate={SKEW}"


def _config(arg, kind, steps, seed):
    layers, d_model, heads, _, _, batch, _ = SCALES[arg.scale]
    c = sft_config(kind, layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch, max_new_tokens=20,
                   seed=seed, seq_len=SEQ_LEN, eval_examples=20)  # fmt: skip
    c.train.log_every = max(1, steps // 5)
    return c


def get_config(arg=None):
    """A judge's config (--config.* overrides apply to every stage that has the key)."""
    arg = _arg(arg)
    return _config(arg, BALANCED, SCALES[arg.scale][4], arg.seed)


def get_stages(arg=None):
    arg = _arg(arg)
    gen_steps, judge_steps = SCALES[arg.scale][3:5]
    stages = []
    for i, (name, style) in enumerate(_styles().items()):
        stages.append(Stage(f"gen_{name}", _config(arg, f"judge_answer:style={style}", gen_steps, arg.seed + 10 * i)))
    for name, style in _styles().items():
        judge_config = _config(arg, BALANCED, judge_steps, arg.seed)
        stages.append(Stage(f"judge_{name}", judge_config,
                            inputs={"sft.base_workdir": f"gen_{name}", "train.init_from": f"gen_{name}"},
                            sweep=({"sft.tasks": BALANCED}, {"sft.tasks": skewed_kind(style)})))  # fmt: skip
    return stages


# --- analysis -----------------------------------------------------------------------------------------


def _lengths(tokenizer, texts):
    import numpy as np

    return np.array([len(tokenizer.encode(t)) for t in texts])


def _both_orders(judge, questions, first, second):
    """(P(first better) with `first` shown first, P(first better) with `second` shown first)."""
    return judge.pairwise(questions, first, second), judge.pairwise(questions, second, first)


def probe_position(judge, pairs):
    from research.apps import judge as J

    q, c, w = [p.question for p in pairs], [p.correct for p in pairs], [p.wrong for p in pairs]
    p_cw, p_wc = _both_orders(judge, q, c, w)
    gold_first = [True] * len(pairs) + [False] * len(pairs)
    return {
        "consistency": J.position_consistency(p_cw, p_wc),
        "first_win_rate": J.first_position_win_rate(p_cw, p_wc),
        "agreement_one_order": J.agreement(list(p_cw) + list(p_wc), gold_first),
        "agreement_swap_averaged": J.agreement(J.swap_average(p_cw, p_wc), [True] * len(pairs)),
        "p_correct": J.swap_average(p_cw, p_wc),
    }


def verbosity_prefs(judge, padded):
    """Swap-averaged P(padded better) on (question, plain, padded) triples, and the length differences."""
    from research.apps import judge as J

    q, plain, longer = zip(*padded, strict=True)
    p_lp, p_pl = _both_orders(judge, q, longer, plain)
    diff = _lengths(judge.tokenizer, longer) - _lengths(judge.tokenizer, plain)
    return J.swap_average(p_lp, p_pl), diff


def choose_length_penalty(p_padded, length_diff, grid) -> float:
    """The smallest per-token weight whose penalised padded-vs-plain win rate is nearest 0.5 (no preference
    for length on equal content), on the held-out "val" pairs."""
    from research.apps import judge as J

    gaps = [abs(J.win_rate(J.length_penalized(p_padded, length_diff, 0, per_token=w)) - 0.5) for w in grid]
    return float(grid[min(range(len(grid)), key=lambda i: (round(gaps[i], 6), i))])


def self_preference(judge, questions, mine, other):
    """Swap-averaged P(judge prefers `mine` over `other`), both correct answers to the same questions."""
    from research.apps import judge as J

    return J.swap_average(*_both_orders(judge, questions, mine, other))


def _correlation(x, y):
    import numpy as np

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def rouge_vs_gold(pairs):
    """Per ROUGE kind: agreement with gold (both orders) and the correlation of F1(first) - F1(second)
    with the gold sign."""
    import numpy as np

    from research.apps import judge as J
    from research.apps.rouge import KINDS, rouge

    refs = [p.reference for p in pairs]
    out = {}
    for kind in KINDS:
        c, w = rouge([p.correct for p in pairs], refs)[kind], rouge([p.wrong for p in pairs], refs)[kind]
        prefers = np.where(c > w, 1.0, np.where(c < w, 0.0, 0.5))
        signs = [1] * len(c) + [-1] * len(c)  # both orders: F1(first) - F1(second) against +-1
        out[kind] = {"agreement": J.agreement(prefers, [True] * len(pairs)),
                     "correlation": _correlation(np.concatenate([c - w, w - c]), signs)}  # fmt: skip
    return out


def _generator_answers(run, questions):
    """Greedy answers of a generator base to the questions, and which are right."""
    from research.apps import judge_data
    from research.data import instructions
    from research.decode import generate

    model, params = run.for_decoding()
    tok = run.tokenizer
    encoded = [instructions.prompt_tokens(tok, q).tolist() for _, _, q in questions]
    rows = generate(model, params, encoded, max_new_tokens=24, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    texts = [tok.decode([t for t in r if t != tok.eos_id]).strip() for r in rows]
    right = [judge_data.stated_value(t) == a + b for t, (a, b, _) in zip(texts, questions, strict=True)]
    return texts, right


def _mean_std(values):
    import numpy as np

    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def evaluate_judge(judge, arg, generator_outputs, base_name):
    """Every probe of one judge over EVAL_SEEDS data seeds; the length-penalty weight from the val part."""
    import numpy as np

    from research.apps import judge as J
    from research.apps import judge_data as D

    n = SCALES[arg.scale][6]
    grid = np.concatenate([[0.0], np.geomspace(1e-6, 1.0, 61)])  # per token (byte); tiny judges lean by 1e-4
    per_seed = []
    for seed in EVAL_SEEDS:
        s = arg.seed * 100 + seed
        row = {}
        pairs = D.gold_pairs(n, seed=s, part="test")
        pos = probe_position(judge, pairs)
        row.update({k: v for k, v in pos.items() if k != "p_correct"})
        correct_len, wrong_len = (
            _lengths(judge.tokenizer, [p.correct for p in pairs]),
            _lengths(judge.tokenizer, [p.wrong for p in pairs]),
        )
        for how in D.PADDINGS:
            val_p, val_diff = verbosity_prefs(judge, D.padded_pairs(n, how, seed=s, part="val"))
            weight = choose_length_penalty(val_p, val_diff, grid)
            test_p, test_diff = verbosity_prefs(judge, D.padded_pairs(n, how, seed=s, part="test"))
            row[f"verbosity_{how}"] = J.win_rate(test_p)
            row[f"verbosity_{how}_mean_p"] = float(np.mean(test_p))  # the size of the lean, not only its sign
            row[f"verbosity_{how}_penalized"] = J.win_rate(J.length_penalized(test_p, test_diff, 0, per_token=weight))
            row[f"length_weight_{how}"] = weight
            penalized = J.length_penalized(pos["p_correct"], correct_len, wrong_len, per_token=weight)
            row[f"agreement_penalized_{how}"] = J.agreement(penalized, [True] * len(pairs))
        for name, (questions, texts) in generator_outputs.items():
            other = [
                D.state(D.OTHER_STYLE, a, b, D.stated_value(t)) for (a, b, _), t in zip(questions, texts, strict=True)
            ]
            p_mine = self_preference(judge, [q for _, _, q in questions], texts, other)
            row[f"prefers_{name}"], row[f"prefers_{name}_mean_p"] = J.win_rate(p_mine), float(np.mean(p_mine))
        row["self_preference"] = row[f"prefers_{base_name}"]
        row["self_preference_mean_p"] = row[f"prefers_{base_name}_mean_p"]
        row["other_base_mean_p"] = np.mean([row[f"prefers_{k}_mean_p"] for k in generator_outputs if k != base_name])
        row["other_base_preference"] = np.mean([row[f"prefers_{k}"] for k in generator_outputs if k != base_name])
        per_seed.append(row)
    return {k: _mean_std([r[k] for r in per_seed]) for k in per_seed[0]}


def text_path(judge, pairs, n_justify=50):
    """The generated verdict, parsed (no verdict: a failure), and whether the justification states the sum."""
    from research.apps import judge as J
    from research.apps import judge_data as D

    q, c, w = [p.question for p in pairs], [p.correct for p in pairs], [p.wrong for p in pairs]
    prompts = judge.pairwise_prompts(q, c, w)
    p = J.text_preference(judge.generated_verdicts(prompts + judge.pairwise_prompts(q, w, c)))  # both orders
    # Justify where "A\nBecause" and 12 more tokens ("4 + 8 = 12." and [EOS]) fit the model's context.
    room = judge.model.config.max_len - len("A\nBecause") - 12
    fits = [(pair, t) for pair, t in zip(pairs, prompts, strict=True) if len(judge._encode(t)) <= room][:n_justify]
    reasons = judge.justify([t for _, t in fits], ["A"] * len(fits), max_new_tokens=12)
    right = [D.justification(pair).rstrip(".") in r for (pair, _), r in zip(fits, reasons, strict=True)]
    return {"text_agreement": J.agreement(p, [True] * len(pairs) + [False] * len(pairs)),
            "text_failures": J.failure_rate(p),
            "justification_right": float(sum(right) / len(right)), "justification_example": reasons[0]}  # fmt: skip


def analyze(workdir, runs, arg=None):
    import numpy as np

    from research.apps import judge as J
    from research.apps import judge_data as D
    from research.train.runs import load_run

    arg = _arg(arg)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.stage, []).append(r)
    # The generators answer every self-preference question (test part). Each answer that states a value is
    # paired with the third source's answer stating the same value: equally correct (or equally wrong),
    # so a preference between them is for the source, not the content.
    questions = D.questions(part="test")
    generator_outputs, generator_accuracy = {}, {}
    for name in _styles():
        texts, right = _generator_answers(load_run(by_stage[f"gen_{name}"][0].workdir), questions)
        generator_accuracy[name] = float(np.mean(right))
        kept = [(q, t) for q, t in zip(questions, texts, strict=True) if D.stated_value(t) is not None]
        generator_outputs[name] = ([q for q, _ in kept], [t for _, t in kept])
    results = {"generator_accuracy": generator_accuracy,
               "generator_examples": {k: v[1][:2] for k, v in generator_outputs.items()}, "judges": {}}  # fmt: skip
    text_pairs = D.gold_pairs(SCALES[arg.scale][6], seed=arg.seed * 100, part="test")
    for base_name in _styles():
        for run in by_stage[f"judge_{base_name}"]:
            data = "balanced" if run.overrides["sft.tasks"] == BALANCED else "skewed"
            judge = J.Judge.from_run(load_run(run.workdir), template=D.TEMPLATE, criteria=D.CRITERIA)
            out = evaluate_judge(judge, arg, generator_outputs, base_name)
            out.update(text_path(judge, text_pairs))
            results["judges"][f"{data}, base {base_name.upper()}"] = out
    results["rouge"] = {}
    for seed in EVAL_SEEDS:
        for kind, v in rouge_vs_gold(
            D.gold_pairs(SCALES[arg.scale][6], seed=arg.seed * 100 + seed, part="test")
        ).items():
            for k, x in v.items():
                results["rouge"].setdefault(kind, {}).setdefault(k, []).append(x)
    results["rouge"] = {kind: {k: _mean_std(x) for k, x in v.items()} for kind, v in results["rouge"].items()}
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    lines = _table(results)
    (workdir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, workdir / "judge_bias.png")


ROWS = (
    ("gold agreement, one order", "agreement_one_order"),
    ("gold agreement, swap-averaged", "agreement_swap_averaged"),
    ("position consistency", "consistency"),
    ("first-position win rate", "first_win_rate"),
    ("padded (filler) beats plain", "verbosity_filler"),
    ("... mean P(padded better)", "verbosity_filler_mean_p"),
    ("... with length penalty", "verbosity_filler_penalized"),
    ("padded (repeat) beats plain", "verbosity_repeat"),
    ("... with length penalty", "verbosity_repeat_penalized"),
    ("length weight (filler, from val)", "length_weight_filler"),
    ("gold agreement, swap-avg + penalty (filler)", "agreement_penalized_filler"),
    ("prefers own base's answers (self)", "self_preference"),
    ("prefers those answers, judge of the other base", "other_base_preference"),
    ("mean P(own base's answer better): self", "self_preference_mean_p"),
    ("... judge of the other base", "other_base_mean_p"),
    ("text verdict: gold agreement", "text_agreement"),
    ("text verdict: no parseable verdict", "text_failures"),
    ("justification states the right sum", "justification_right"),
)


def _number(x):
    return f"{x:.2g}" if 0 < abs(x) < 0.01 else f"{x:.3f}"  # the length weights are small


def _cell(v):
    if isinstance(v, dict):
        return f"{_number(v['mean'])} ± {_number(v['std'])}"
    return _number(v) if isinstance(v, float) else str(v)


def _table(results):
    names = list(results["judges"])
    lines = [
        "Generators' accuracy on the self-preference questions: "
        + ", ".join(f"{k.upper()} {v:.2f}" for k, v in results["generator_accuracy"].items()),
        f"Mean ± std over {len(EVAL_SEEDS)} draws of the held-out probe pairs (one training seed); "
        "text path and justifications on one draw.",
        "",
        "| probe | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(results["judges"][n][key]) for n in names) + " |")
    lines += ["", "| ROUGE vs reference 'a + b = v' | gold agreement | correlation with gold |", "|---|---:|---:|"]
    for kind, v in results["rouge"].items():
        lines.append(f"| {kind} | {_cell(v['agreement'])} | {_cell(v['correlation'])} |")
    return lines


def plot_seeds(workdir, merged, arg=None):
    """judge_bias.png again from every training seed's results: bars widen to the spread over seeds too."""
    del arg
    _plot(merged, workdir / "judge_bias.png")


def _spread(cell):
    """(mean, error bar) of a probe's {"mean", "std"} over EVAL_SEEDS draws. In one seed's results the bar is
    that std; merged over training seeds (each field then a summary, or plain where equal in every seed) it
    is the std over seeds of the mean combined with the mean std over draws: sqrt(s_seeds**2 + s_draws**2)."""
    import math

    from research.stats import mean_err

    mean, seed_std = mean_err(cell["mean"])
    return mean, math.hypot(seed_std, mean_err(cell["std"])[0])


def _plot(results, path):
    """Left: each judge's biases before (bars) and after (dots) their mitigations; right: gold agreement of
    the judges next to ROUGE's. A colour per judge in both panels; error bars from `_spread`."""
    import numpy as np
    from matplotlib.figure import Figure

    names = list(results["judges"])
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    groups = (
        ("first-pos. win", "first_win_rate", None),
        ("padded wins (filler)", "verbosity_filler", "verbosity_filler_penalized"),
        ("padded wins (repeat)", "verbosity_repeat", "verbosity_repeat_penalized"),
        ("self-preference", "self_preference", "other_base_preference"),
    )
    fig = Figure(figsize=(12, 4.2))
    bias, agree = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        r = results["judges"][name]
        before, before_err = zip(*(_spread(r[b]) for _, b, _ in groups), strict=True)
        # swap-averaging: 0.5 by construction
        after, after_err = zip(*(_spread(r[a]) if a else (0.5, 0.0) for _, _, a in groups), strict=True)
        bias.bar(x + i * width, before, width * 0.9, yerr=before_err, capsize=3, color=colors[name], alpha=0.45,
                 label=f"{name}: before")  # fmt: skip
        bias.errorbar(x + i * width, after, yerr=after_err, fmt="o", capsize=3, color=colors[name], mec="k", zorder=3)
    bias.axhline(0.5, color="k", lw=0.8, ls="--")
    bias.set_xticks(x + 0.4 - width / 2, [g for g, _, _ in groups])
    bias.set(ylim=(0, 1.05), ylabel="rate (fraction of probe pairs)")
    bias.set_title("biases: bars before, dots after the mitigation (± std over draws and seeds)", fontsize=10)
    bias.legend(fontsize=7)
    labels = [*names, *(f"ROUGE-{k[5:]}" for k in results["rouge"])]
    cells = [results["judges"][n]["agreement_swap_averaged"] for n in names]
    cells += [v["agreement"] for v in results["rouge"].values()]
    values, errors = zip(*(_spread(c) for c in cells), strict=True)
    agree.barh(
        labels, values, xerr=errors, capsize=3, color=[colors[n] for n in names] + ["grey"] * len(results["rouge"])
    )
    agree.axvline(0.5, color="k", lw=0.8, ls="--")
    agree.set(xlim=(0, 1.05), xlabel="agreement with gold (fraction of pairs)")
    agree.set_title("judge vs ROUGE", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
