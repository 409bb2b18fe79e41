"""Added tokens (AddedTokens in research/tokenizers/base.py): one id each after any vocabulary, old and new files."""

import json

import numpy as np
import pytest

from research.tokenizers import TOKENIZER_KINDS, ByteTokenizer, load_tokenizer
from tests.tokenizers.conftest import CORPUS

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
TEXTS = ["<think>4>2 2>9</think><answer>9</answer>", "plain text, no tags", "a</think>b<think>", "<think><think>"]

every_kind = pytest.mark.parametrize("kind", TOKENIZER_KINDS)


@every_kind
def test_tags_are_single_ids_after_the_vocabulary_and_the_base_is_unchanged(trained, kind):
    base = trained[kind]
    tok = base.with_added_tokens(TAGS)
    assert tok.vocab_size == base.vocab_size + 4
    assert [tok.token_to_id(t) for t in TAGS] == list(range(base.vocab_size, base.vocab_size + 4))
    assert [tok.id_to_token(base.vocab_size + i) for i in range(4)] == list(TAGS)
    for text in TEXTS:
        ids = tok.encode(text)
        # Reference: split at the tags by hand, encode the pieces with the base tokenizer.
        expected, rest = [], text
        while rest:
            hits = [(rest.find(t), t) for t in TAGS if t in rest]
            if not hits:
                expected += base.encode(rest).tolist()
                break
            at, tag = min(hits)
            expected += base.encode(rest[:at]).tolist() + [tok.token_to_id(tag)]
            rest = rest[at + len(tag) :]
        assert ids.tolist() == expected, text
        assert ids.dtype == np.int32
    assert tok.encode("no tags").tolist() == base.encode("no tags").tolist()


def test_byte_round_trip_keeps_tags_with_skip_special_and_drops_eos():
    tok = ByteTokenizer().with_added_tokens(TAGS)
    for text in TEXTS:
        ids = tok.encode(text, add_bos=True, add_eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == text  # the tags are content; [BOS]/[EOS] are dropped
        assert tok.decode(ids, skip_special=False) == "[BOS]" + text + "[EOS]"


@every_kind
def test_saved_with_added_tokens_and_old_files_load_unchanged(trained, kind, tmp_path):
    base = trained[kind]
    base.save(tmp_path / "old.json")
    assert "added_tokens" not in json.loads((tmp_path / "old.json").read_text())
    old = load_tokenizer(tmp_path / "old.json")
    assert old.vocab_size == base.vocab_size and old.encode(TEXTS[0]).tolist() == base.encode(TEXTS[0]).tolist()
    tok = base.with_added_tokens(TAGS)
    tok.save(tmp_path / "new.json")
    spec = json.loads((tmp_path / "new.json").read_text())
    assert spec["type"] == kind and spec["added_tokens"] == list(TAGS)
    loaded = load_tokenizer(tmp_path / "new.json")
    assert loaded.vocab_size == tok.vocab_size
    for text in TEXTS + CORPUS[:2]:
        assert loaded.encode(text).tolist() == tok.encode(text).tolist()
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "new.json").read_bytes()


@pytest.mark.parametrize(
    "tokens, message",
    [
        (("<think>", "<think>"), "twice"),
        (("",), "non-empty"),
        ((" <x>",), "whitespace"),
        (("[EOS]",), "special token"),
        (("<0x41>",), "already in the byte vocabulary"),
    ],
)
def test_bad_added_tokens_are_refused(tokens, message):
    with pytest.raises(ValueError, match=message):
        ByteTokenizer().with_added_tokens(tokens)


def test_adding_twice_and_a_corrupt_file(tmp_path):
    tok = ByteTokenizer().with_added_tokens(TAGS)
    assert tok.with_added_tokens(TAGS) is tok
    with pytest.raises(ValueError, match="already has added tokens"):
        tok.with_added_tokens(("<x>",))
    spec = {"type": "byte", "version": 1, "special_tokens": list(tok.special_tokens), "added_tokens": "<think>"}
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="corrupt.*added_tokens must be a list"):
        load_tokenizer(tmp_path / "bad.json")
