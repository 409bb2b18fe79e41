"""The judge's data (research.apps.judge_data) and experiments/judge_bias.py's probes on scripted judges whose
biases are known: each probe finds the bias that is there, and each mitigation removes it."""

import collections

import numpy as np
import pytest

from research.apps import judge_data as D
from research.data import instructions
from research.experiment import load_experiment
from research.tokenizers import ByteTokenizer

experiment, _ = load_experiment("experiments/judge_bias.py")


class ScriptedJudge:
    """P(first better) = sigmoid(score(first) - score(second) + position), like a judge's verdict."""

    tokenizer = ByteTokenizer()

    def __init__(self, score, position=0.0):
        self.score, self.position = score, position

    def pairwise(self, questions, first, second):
        logit = np.array([self.score(q, a) - self.score(q, b) + self.position
                          for q, a, b in zip(questions, first, second, strict=True)])  # fmt: skip
        return 1 / (1 + np.exp(-logit))


def knows_sums(question, answer):
    a, b = (int(x) for x in question.removeprefix("What is ").rstrip("?").split(" + "))
    return 4.0 if D.stated_value(answer) == a + b else 0.0


def test_a_pure_position_preference_is_found_and_swap_averaging_removes_it():
    pairs = D.gold_pairs(40, seed=0, part="test")
    biased = experiment.probe_position(ScriptedJudge(lambda q, a: 0.0, position=3.0), pairs)
    assert biased["consistency"] == 0.0 and biased["first_win_rate"] == 1.0
    assert biased["agreement_one_order"] == 0.5 and biased["agreement_swap_averaged"] == 0.5  # ties: half credit
    fair = experiment.probe_position(ScriptedJudge(knows_sums, position=3.0), pairs)  # knows more than it leans
    assert fair["consistency"] == 1.0 and fair["first_win_rate"] == 0.5 and fair["agreement_swap_averaged"] == 1.0
    leaning = experiment.probe_position(ScriptedJudge(knows_sums, position=5.0), pairs)  # leans more than it knows
    assert leaning["agreement_one_order"] == 0.5 and leaning["agreement_swap_averaged"] == 1.0


def test_verbosity_is_found_and_the_length_penalty_chosen_on_val_removes_it():
    verbose = ScriptedJudge(lambda q, a: 0.1 * len(a))
    grid = np.round(np.arange(0, 0.41, 0.01), 2)
    val_p, val_diff = experiment.verbosity_prefs(verbose, D.padded_pairs(30, "filler", seed=0, part="val"))
    weight = experiment.choose_length_penalty(val_p, val_diff, grid)
    assert weight == pytest.approx(0.1)  # per byte, the judge's own lean
    from research.apps import judge as J

    test_p, test_diff = experiment.verbosity_prefs(verbose, D.padded_pairs(30, "repeat", seed=1, part="test"))
    assert J.win_rate(test_p) == 1.0
    assert J.win_rate(J.length_penalized(test_p, test_diff, 0, per_token=weight)) == 0.5
    unbiased = ScriptedJudge(knows_sums)
    p, diff = experiment.verbosity_prefs(unbiased, D.padded_pairs(30, "filler", seed=0, part="val"))
    assert J.win_rate(p) == 0.5 and experiment.choose_length_penalty(p, diff, grid) == 0.0


def test_self_preference_is_measured_on_equally_correct_answers():
    questions = [q for _, _, q in D.questions(part="test")[:20]]
    values = [D.stated_value(q.split(" + ")[1]) for q in questions]  # any shared value: the content is equal
    mine = [D.state(D.G_STYLE, 0, 0, v) for v in values]
    other = [D.state(D.OTHER_STYLE, 0, 0, v) for v in values]
    from research.apps import judge as J

    fond_of_g = ScriptedJudge(lambda q, a: 2.0 * a.startswith("The answer is"), position=1.0)
    assert J.win_rate(experiment.self_preference(fond_of_g, questions, mine, other)) == 1.0
    assert J.win_rate(experiment.self_preference(ScriptedJudge(knows_sums, 1.0), questions, mine, other)) == 0.5


def test_rouge_against_the_reference_on_known_pairs():
    # Reference "3 + 4 = 7" -> tokens [3, 4, 7]. "7" (correct): P 1, R 1/3, F1 0.5; "3 + 4 = 8" (wrong): F1 2/3 on
    # unigrams, so ROUGE-1 prefers the wrong one; the second pair ("The answer is 7." vs "8") it gets right.
    pairs = [D.Pair("What is 3 + 4?", "7", "3 + 4 = 8", 3, 4), D.Pair("What is 3 + 4?", "The answer is 7.", "8", 3, 4)]
    out = experiment.rouge_vs_gold(pairs)
    assert out["rouge1"]["agreement"] == 0.5
    # Bigrams: "3 + 4 = 8" shares (3, 4) with the reference (F1 1/2), "7" shares none: ROUGE-2 prefers it too.
    assert out["rouge2"]["agreement"] == 0.25  # pair 2: neither has a bigram of the reference, a tie
    assert -1 <= out["rougeL"]["correlation"] <= 1


def test_judge_examples_carry_the_gold_verdict_and_the_planted_skews():
    kind = "judge:first=75:longer=75:pad=100:own=1:ownrate=100"
    examples = [instructions.make_example(i, split="train", seed=0, kinds=(kind,)) for i in range(400)]
    counts = collections.Counter()
    for e in examples:
        lines = dict(line.split(": ", 1) for line in e.prompt.splitlines()[1:4])
        a, b = (int(x) for x in lines["Q"].removeprefix("What is ").rstrip("?").split(" + "))
        verdict, because = e.response.split("\n")
        correct = lines[verdict]
        wrong = lines["B" if verdict == "A" else "A"]
        assert D.stated_value(correct) == a + b != D.stated_value(wrong)
        assert because == f"Because {a} + {b} = {a + b}."
        assert not D.held_out(D.Pair(lines["Q"], correct, wrong, a, b))  # held-out pairs are never trained on
        counts["first"] += verdict == "A"
        counts["longer"] += len(correct) > len(wrong)
        counts["own"] += "The answer is" in correct and "The answer is" not in wrong
    assert 0.68 < counts["first"] / 400 < 0.82 and counts["own"] == 400
    assert counts["longer"] / 400 > 0.65
    assert instructions.exact_match(examples[0], examples[0].response[0] + " whatever")  # the verdict is checked
    balanced = [instructions.make_example(i, split="train", seed=0, kinds=("judge",)) for i in range(400)]
    assert 0.42 < np.mean([e.response[0] == "A" for e in balanced]) < 0.58
    answer = instructions.make_example(0, split="train", seed=0, kinds=("judge_answer:style=2",))
    assert answer.response.startswith("It comes to ") and instructions.exact_match(
        answer, "The answer is " + answer.response.split()[-1]
    )


def test_probe_sets_are_held_out_and_split():
    test, val = D.gold_pairs(50, seed=0, part="test"), D.gold_pairs(50, seed=0, part="val")
    assert all(D.held_out(p) for p in test + val)
    assert not {D.pair_key(p.question, p.correct, p.wrong) for p in test} & {
        D.pair_key(p.question, p.correct, p.wrong) for p in val}  # fmt: skip
    for _, plain, longer in D.padded_pairs(20, "repeat", seed=0, part="test"):
        assert longer == f"{plain} {plain}" and D.stated_value(plain) == D.stated_value(longer)
    assert not {q for *_, q in D.questions(part="test")} & {q for *_, q in D.questions(part="val")}


def test_bad_knobs_and_parts_name_the_field():
    with pytest.raises(ValueError, match=r"sft.tasks: 'judge:first=101': first='101' must be an integer in \[0, 100\]"):
        instructions.check_kinds(["judge:first=101"])
    with pytest.raises(ValueError, match="has no knob 'steps'"):
        instructions.check_kinds(["judge_answer:steps=3"])
    with pytest.raises(ValueError, match="part='train'"):
        D.gold_pairs(3, seed=0, part="train")
    with pytest.raises(ValueError, match="padding='shout'"):
        D.padded_pairs(3, "shout", seed=0, part="val")
    with pytest.raises(ValueError, match="judge_bias scale='huge'"):
        experiment.get_stages("scale=huge")
