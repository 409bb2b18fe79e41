"""The key_recall documents: exact length, one key far back, the answer where answer_index says."""

import numpy as np
import pytest

from research.data.key_recall import KEYS, answer_index, make_document
from research.tokenizers import ByteTokenizer


@pytest.mark.parametrize("length", [64, 256])
def test_documents_fill_one_row_and_the_answer_repeats_a_distant_key(length):
    rng = np.random.default_rng(0)
    tok = ByteTokenizer()
    keys = []
    for _ in range(50):
        doc = make_document(length, rng)
        ids = tok.encode(doc, add_eos=True)
        assert len(ids) == length  # one packed row per document
        key_pos = [i for i, c in enumerate(doc) if c in KEYS]
        assert len(key_pos) == 2 and key_pos[1] == answer_index(length)
        assert doc[answer_index(length) - 1] == "=" and doc[key_pos[0]] == doc[key_pos[1]]
        assert answer_index(length) - key_pos[0] >= length * 7 // 8 - 2  # far beyond a local window
        keys.append(doc[key_pos[0]])
    assert len(set(keys)) > 10  # keys vary: chance accuracy is 1/26, not a constant to memorise


def test_too_short_is_an_error():
    with pytest.raises(ValueError, match="length=8 must be >= 16"):
        make_document(8, np.random.default_rng(0))
