import math

import pytest

from research.stats import mean_err, merge_results, results_markdown, separated, summarize


def test_summarize_against_the_textbook():
    s = summarize([1, 2, 3, 4])
    assert s["mean"] == 2.5 and s["n"] == 4 and s["values"] == [1.0, 2.0, 3.0, 4.0]
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof = 1
    assert summarize([7])["std"] == 0.0
    assert mean_err(s) == (2.5, s["std"]) and mean_err(3) == (3.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])


def test_separated_needs_the_intervals_apart():
    a, b = summarize([1.0, 1.2]), summarize([1.5, 1.7])  # 1.1 ± 0.14 vs 1.6 ± 0.14
    assert separated(a, b) and separated(b, a)
    assert not separated(a, summarize([1.2, 1.6]))  # 1.4 ± 0.28 reaches into a's interval
    assert separated(a, 2.0) and not separated(a, 1.1)
    with pytest.raises(TypeError):
        separated(a, "x")


def test_merge_keeps_the_shape_and_summarizes_what_varies():
    per_seed = {
        0: {"rows": [{"name": "lora", "acc": 0.5, "n": 10, "curve": [1.0, 2.0]}], "note": "a", "missing": None},
        1: {"rows": [{"name": "lora", "acc": 0.7, "n": 10, "curve": [3.0, 2.0]}], "note": "b", "missing": 1.0},
    }
    merged = merge_results(per_seed)
    row = merged["rows"][0]
    assert row["name"] == "lora" and row["n"] == 10 and row["curve"][1] == 2.0  # equal in every seed: plain
    assert row["acc"]["mean"] == pytest.approx(0.6) and row["acc"]["n"] == 2
    assert row["curve"][0]["values"] == [1.0, 3.0]
    assert merged["note"] == {"by_seed": {0: "a", 1: "b"}}
    assert merged["missing"]["n"] == 1  # None is left out of the count

    with pytest.raises(ValueError, match=r"results\.rows\[0\]: seed 1 has keys \['acc', 'name'\]"):
        merge_results({0: {"rows": [{"name": "x", "acc": 1, "loss": 2}]}, 1: {"rows": [{"name": "x", "acc": 1}]}})
    with pytest.raises(ValueError, match=r"results\.rows: seed 1 has 1 entries, seed 0 has 2"):
        merge_results({0: {"rows": [1, 2]}, 1: {"rows": [1]}})
    with pytest.raises(ValueError, match="at least one"):
        merge_results({})


def test_markdown_renders_every_table():
    merged = merge_results(
        {
            0: {"mlm": {"accuracy": 0.3}, "classify": [{"name": "scratch", "acc": 0.5}, {"name": "pre", "acc": 0.6}]},
            1: {"mlm": {"accuracy": 0.3}, "classify": [{"name": "scratch", "acc": 0.7}, {"name": "pre", "acc": 0.6}]},
        }
    )
    text = results_markdown(merged, seeds=[0, 1, 2], failed={2: "RuntimeError: x"})
    assert "2 of 3 seeds (0, 1)" in text and "- seed 2 FAILED: RuntimeError: x" in text
    assert "| mlm.accuracy | 0.3 |" in text
    assert "## classify" in text and "| name | acc |" in text
    assert "| scratch | 0.6 ± 0.14 |" in text and "| pre | 0.6 |" in text
    curve = results_markdown(merge_results({0: [1.0, 2.0], 1: [3.0, 2.0]}), seeds=[0, 1])
    assert "2 ± 1.4, 2" in curve
