"""decode(encode(x)) == x on arbitrary Unicode for the lossless kinds: byte, char, bpe."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.tokenizers.conftest import UNSEEN_CHAR

LOSSLESS = ["byte", "char", "bpe"]


@pytest.mark.parametrize("kind", LOSSLESS)
@settings(max_examples=150, deadline=None)
@given(text=st.text())
@example(text="")
@example(text="[PAD][UNK] [BOS]x[EOS]")  # the specials' names are text like any other
@example(text=" \t\n\r\x00\x7f\u00a0\u2028  leading and trailing spaces  ")
@example(text="e\u0301 \ufb01 \uff21 \u212b")  # combining and compatibility forms: nothing normalises them
@example(text=UNSEEN_CHAR * 3 + "\U0010ffff\U0001f600")
def test_lossless_on_any_unicode(trained, kind, text):
    tok = trained[kind]
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert not (ids == tok.unk_id).any(), "a lossless tokenizer never needs [UNK]"
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text


@pytest.mark.parametrize("kind", LOSSLESS)
@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_padded_batches_decode_back(trained, kind, texts):
    tok = trained[kind]
    batch = tok.encode_batch(texts, length=200, add_cls=True, add_sep=True)
    for row, text in zip(batch["input_ids"], texts, strict=True):
        assert tok.decode(row) == text  # [CLS], [SEP] and [PAD] are dropped


@settings(max_examples=100, deadline=None)
@given(data=st.binary())
def test_byte_tokenizer_takes_any_bytes(trained, data):
    tok = trained["byte"]
    ids = tok.encode(data)
    np.testing.assert_array_equal(ids, np.frombuffer(data, np.uint8).astype(np.int32) + 7)
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")
