"""Self-consistency: the vote, the unbiased pass@k against enumeration, a hand-scored vote curve, the glue."""

import itertools
import math

import pytest

from research.reason.consistency import majority_vote, pass_at_k, self_consistency, vote_curve


@pytest.mark.parametrize(
    "answers, want",
    [
        (["a"], "a"),
        (["a", "b", "b"], "b"),
        (["a", "b"], "a"),  # tie: the earliest first occurrence
        (["b", "a"], "b"),
        (["b", "a", "a", "b", "c"], "b"),  # 2-2 tie: b occurs first
        (["c", "a", "b", "a", "b"], "a"),  # 2-2 tie between a and b, c has 1: a occurs before b
        ([None, None, "x"], "x"),  # None never votes
        ([None, "y", None, None, "z", "z"], "z"),
        (["1", None, None, None, "2", "2"], "2"),  # three Nones do not outvote anything
        ([None], None),
        ([None, None, None], None),
    ],
)
def test_majority_vote(answers, want):
    assert majority_vote(answers) == want
    assert majority_vote(tuple(answers)) == want


def test_majority_vote_of_nothing_raises():
    with pytest.raises(ValueError, match="answers"):
        majority_vote([])


def brute_pass_at_k(n, c, k):
    """The fraction of k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_stable_where_the_binomials_overflow_floats():
    n, c, k = 2000, 3, 500
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)


@pytest.mark.parametrize("args, field", [((0, 0, 1), "num_samples"), ((3, 4, 1), "num_correct"), ((3, 1, 4), "k")])
def test_pass_at_k_bad_inputs(args, field):
    with pytest.raises(ValueError, match=field):
        pass_at_k(*args)


# Two prompts, four samples each. Prompt 0 (gold "1"): first votes "2" (wrong), "2" vs "1" tied at n = 2 (the
# earlier "2" wins, wrong), then "1" leads. Prompt 1 (gold "5"): None, then "5", a 1-1 tie at n = 3 that "5" wins,
# then "3" leads at n = 4 (wrong).
TABLE = [["2", "1", "1", None], [None, "5", "3", "3"]]
GOLD = ["1", "5"]


def test_vote_curve_on_a_hand_scored_table():
    got = vote_curve(TABLE, GOLD, ns=[1, 2, 3, 4])
    want = {
        "maj@1": 0.0,
        "maj@2": 0.5,
        "maj@3": 1.0,
        "maj@4": 0.5,
        # prompt 0: n=4, c=2; prompt 1: n=4, c=1. pass@k = 1 - C(4-c, k) / C(4, k).
        "pass@1": (2 / 4 + 1 / 4) / 2,
        "pass@2": ((1 - 1 / 6) + (1 - 3 / 6)) / 2,
        "pass@3": (1 + (1 - 1 / 4)) / 2,
        "pass@4": 1.0,
        "distinct_answers": 2.0,  # {"2", "1"} and {"5", "3"}: None is not an answer
        "well_formed": 6 / 8,
    }
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_vote_curve_pass_at_1_is_there_without_asking():
    got = vote_curve(TABLE, GOLD, ns=[3])
    assert set(got) == {"maj@3", "pass@3", "pass@1", "distinct_answers", "well_formed"}
    assert got["pass@1"] == pytest.approx(3 / 8)


def test_vote_curve_all_none_and_unanimous():
    got = vote_curve([[None, None], ["7", "7"]], ["7", "7"], ns=[1, 2])
    assert got["maj@2"] == 0.5 and got["pass@2"] == 0.5 and got["well_formed"] == 0.5
    assert got["distinct_answers"] == 0.5


@pytest.mark.parametrize("ns", [[0], [5], [1, 5], [-1], [], [1.5]])
def test_vote_curve_bad_ns(ns):
    with pytest.raises(ValueError, match="ns"):
        vote_curve(TABLE, GOLD, ns=ns)


def test_vote_curve_bad_tables():
    with pytest.raises(ValueError, match="same number of samples"):
        vote_curve([["a", "b"], ["a"]], ["a", "a"], ns=[1])
    with pytest.raises(ValueError, match="gold"):
        vote_curve(TABLE, ["1"], ns=[1])
    with pytest.raises(ValueError, match="answers"):
        vote_curve([], [], ns=[1])
    with pytest.raises(ValueError, match="answers"):
        vote_curve([[], []], ["a", "b"], ns=[1])


# Sample s of prompt p answers ANSWERS[p][s]; voted by prompt these give "y", "z", None.
ANSWERS = {"a": ["x", "y", "y"], "b": ["z", "x", "z"], "c": [None, None, None]}


def fake_sampler(log):
    def sample_fn(prompts, n):
        log.append((list(prompts), n))
        return [f"{p}|{s}" for p in prompts for s in range(n)]  # prompt-major, as the sampler's rows

    return sample_fn


def extract(text):
    prompt, s = text.split("|")
    return ANSWERS[prompt][int(s)]


def test_self_consistency_votes_per_prompt_in_prompt_major_order():
    log = []
    assert self_consistency(fake_sampler(log), extract, ["a", "b", "c"], 3) == ["y", "z", None]
    assert log == [(["a", "b", "c"], 3)]  # one batched sampling call for every prompt
    assert self_consistency(fake_sampler(log), extract, ["b", "a"], 3) == ["z", "y"]
    assert self_consistency(fake_sampler(log), extract, ["a", "b"], 1) == ["x", "z"]  # one sample: no vote
    assert self_consistency(fake_sampler(log), extract, ["a"], 2) == ["x"]  # 1-1 tie: the first


def test_self_consistency_bad_inputs():
    with pytest.raises(ValueError, match="num_samples"):
        self_consistency(fake_sampler([]), extract, ["a"], 0)
    with pytest.raises(ValueError, match="sample_fn"):
        self_consistency(lambda prompts, n: ["a|0"], extract, ["a", "b"], 1)
