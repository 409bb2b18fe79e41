"""Preference-pair files: write -> read round trips, and every bad input names its file and line."""

import json
import re

import pytest

from research.data.preferences import PreferencePair, read_pairs, write_pairs

PAIRS = [
    PreferencePair("mov dax", "lorp fen", "gax tuv"),
    PreferencePair("", "only a continuation", "another one"),  # an empty prompt is allowed
    PreferencePair('quotes " and \\ and é 中 \u2028 line sep', "tab\tnewline\n", "x"),
]


def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "sub" / "pairs.jsonl"
    write_pairs(path, PAIRS)
    assert read_pairs(path) == PAIRS
    assert read_pairs(str(path)) == PAIRS
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(PAIRS) + 1 and lines[-1] == ""  # one object per line
    assert json.loads(lines[0]) == {"prompt": "mov dax", "chosen": "lorp fen", "rejected": "gax tuv"}


def test_blank_lines_and_extra_fields_are_skipped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_reward": 0.5}
    path.write_text(f"\n{json.dumps(row)}\n   \n\r\n{json.dumps(row)}\r\n")
    assert read_pairs(path) == [PreferencePair("p", "a", "b")] * 2


GOOD = '{"prompt": "p", "chosen": "a", "rejected": "b"}'


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "p", "chosen": "a"', "invalid JSON"),
        ('["p", "a", "b"]', "expected a JSON object"),
        ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
        ('{"chosen": "a", "rejected": "b"}', "missing field 'prompt'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "field 'chosen' must be a string, got int"),
        ('{"prompt": null, "chosen": "a", "rejected": "b"}', "field 'prompt' must be a string, got NoneType"),
        ('{"prompt": "p", "chosen": "", "rejected": "b"}', "field 'chosen' is empty"),
        ('{"prompt": "p", "chosen": "a", "rejected": "  "}', "field 'rejected' is empty"),
        ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "chosen and rejected are identical"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{GOOD}\n\n{bad_line}\n{GOOD}\n")  # the bad line is line 3: blank lines still count
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        read_pairs(path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_a_file_without_pairs_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: holds no preference pairs")):
        read_pairs(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_pairs(path)


def test_write_refuses_what_read_would_reject(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with pytest.raises(ValueError, match=re.escape(f"pairs[1] cannot be written to {path}: chosen and rejected")):
        write_pairs(path, [PAIRS[0], PreferencePair("p", "same", "same")])
    with pytest.raises(ValueError, match="no preference pairs to write"):
        write_pairs(path, [])
    assert not path.exists()
