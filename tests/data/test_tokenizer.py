import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from research.data import ByteTokenizer, load_tokenizer

tok = ByteTokenizer()


def test_special_ids_and_vocab():
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)


@given(st.text())
def test_round_trip_any_unicode(text):
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode("utf-8"))
    assert ((ids >= 3) & (ids < tok.vocab_size)).all()
    assert tok.decode(ids) == text


@given(st.binary())
def test_bytes_are_taken_as_they_are(data):
    np.testing.assert_array_equal(tok.encode(data), np.frombuffer(data, np.uint8).astype(np.int32) + 3)
    assert tok.decode(tok.encode(data)) == data.decode("utf-8", errors="replace")


def test_bos_eos_are_added_and_dropped():
    ids = tok.encode("hé", add_bos=True, add_eos=True)
    assert ids.tolist() == [1, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 2]
    assert ids.dtype == np.int32
    assert tok.decode(ids) == "hé"
    assert tok.decode([0, 0, ord("a") + 3, 0]) == "a"  # padding is dropped too


def test_decode_replaces_invalid_utf8():
    assert tok.decode([0xFF + 3, ord("a") + 3]) == "\ufffda"


@pytest.mark.parametrize("bad", [-1, 259, 1000])
def test_decode_rejects_out_of_range_ids(bad):
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.decode([5, bad, 6])


def test_save_load(tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    text = path.read_text()
    assert text.count("\n") == 1 and json.loads(text) == {"type": "byte", "version": 1}
    assert isinstance(ByteTokenizer.load(path), ByteTokenizer)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, ByteTokenizer) and loaded.decode(loaded.encode("ok")) == "ok"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "corrupt"),
        ('{"version": 1}', "corrupt"),
        ('{"type": "sentencepiece", "version": 1}', "'sentencepiece'"),
        ('{"type": "byte", "version": 99}', "version 99"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        ByteTokenizer.load(tmp_path / "nope.json")
