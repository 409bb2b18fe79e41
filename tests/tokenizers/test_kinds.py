"""What sets each kind apart: its vocabulary layout and how it treats unseen text."""

import collections

import numpy as np
import pytest

from research.tokenizers import ByteTokenizer, train_tokenizer
from tests.tokenizers.conftest import CORPUS, ENGLISH, UNSEEN_CHAR

# --- byte ----------------------------------------------------------------------------------------


def test_byte_layout():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.byte_offset) == (263, 7)
    assert [tok.id_to_token(i) for i in (7, 7 + 0x41, 262)] == ["<0x00>", "<0x41>", "<0xFF>"]
    assert tok.token_to_id("<0x41>") == 7 + 0x41 and tok.token_to_id("<0x4G>") is None
    assert tok.encode("hé", add_bos=True, add_eos=True).tolist() == [5, ord("h") + 7, 0xC3 + 7, 0xA9 + 7, 6]


def test_byte_decode_replaces_invalid_utf8():
    assert ByteTokenizer().decode([0xFF + 7, ord("a") + 7]) == "\ufffda"


def test_byte_training_learns_nothing_but_checks_its_input():
    tok = train_tokenizer("byte", ["anything"], vocab_size=1000)
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 263


# --- char ----------------------------------------------------------------------------------------


def test_char_layout_is_specials_bytes_then_characters_by_frequency(trained):
    tok = trained["char"]
    assert tok.vocab_size == 330
    assert [tok.id_to_token(i) for i in (7, 8, 262)] == ["<0x00>", "<0x01>", "<0xFF>"]
    counts = collections.Counter("".join(CORPUS))
    learned = [tok.id_to_token(i) for i in range(263, tok.vocab_size)]
    assert learned == sorted(counts, key=lambda c: (-counts[c], c))[: 330 - 263]


def test_char_falls_back_to_utf8_bytes_for_unseen_characters(trained):
    tok = trained["char"]
    e = tok.token_to_id("e")
    assert e >= 263
    assert tok.encode("e" + UNSEEN_CHAR).tolist() == [e] + [b + 7 for b in UNSEEN_CHAR.encode()]
    assert tok.decode(tok.encode("e" + UNSEEN_CHAR)) == "e" + UNSEEN_CHAR


def test_char_min_frequency_keeps_rare_characters_out():
    tok = train_tokenizer("char", ["aaab"], vocab_size=300, min_frequency=2)
    assert [tok.id_to_token(i) for i in range(263, tok.vocab_size)] == ["a"]
    assert tok.encode("ab").tolist() == [263, ord("b") + 7]


# --- word ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def english_words():
    return train_tokenizer("word", ENGLISH, vocab_size=1000)


def test_word_unseen_words_are_unk_and_padding_fills_the_rest(english_words):
    tok = english_words
    text = "este oso de peluche es muuuu adorable"
    ids = tok.encode(text)
    unk, adorable = tok.unk_id, tok.token_to_id("adorable")
    assert adorable is not None and adorable >= 7
    assert ids.tolist() == [unk, unk, unk, unk, unk, unk, adorable]
    assert ids[5] == unk, "muuuu was never seen"
    assert tok.decode(ids) == "[UNK] [UNK] [UNK] [UNK] [UNK] [UNK] adorable"
    batch = tok.encode_batch([text], length=16)
    assert batch["input_ids"][0].tolist() == ids.tolist() + [tok.pad_id] * 9
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 9


def test_word_split_and_lossy_decoding(english_words):
    tok = english_words
    ids = tok.encode("The dog, the bear!\n\tThe  children.")
    assert [tok.id_to_token(i) for i in ids] == ["The", "dog", ",", "the", "bear", "[UNK]", "The", "children", "."]
    assert tok.decode(ids) == "The dog , the bear [UNK] The children ."


def test_word_vocabulary_is_most_frequent_first_and_capped():
    tok = train_tokenizer("word", ["c b a b", "c a b", "d"], vocab_size=9, min_frequency=1)
    assert [tok.id_to_token(i) for i in range(7, tok.vocab_size)] == ["b", "a"]  # a ties c (seen first); a sorts first
    assert tok.encode("a b c d").tolist() == [8, 7, 1, 1]


def test_word_min_frequency():
    tok = train_tokenizer("word", ["one two two three three three"], vocab_size=100, min_frequency=2)
    assert [tok.id_to_token(i) for i in range(7, tok.vocab_size)] == ["three", "two"]
    with pytest.raises(ValueError, match="min_frequency=4.*'three', occurs 3 times"):
        train_tokenizer("word", ["one two two three three three"], vocab_size=100, min_frequency=4)


# --- bpe -----------------------------------------------------------------------------------------


def test_bpe_has_every_byte_and_learned_merges(trained):
    tok = trained["bpe"]
    assert tok.vocab_size == 700
    tokens = [tok.id_to_token(i) for i in range(263, tok.vocab_size)]
    assert all(len(t) > 1 for t in tokens), "ids past the 256 bytes are merges"
    the = tok.encode(" the")
    assert len(the) == 1, "a frequent word is one token"
    rare = tok.encode(UNSEEN_CHAR)
    assert len(rare) == 2 and (rare >= 7).all() and (rare < 263).all(), "an unseen character is its two bytes"


# --- wordpiece -----------------------------------------------------------------------------------


def test_wordpiece_continuation_pieces_carry_hashes(trained):
    tok = trained["wordpiece"]
    ids = tok.encode("The gardens unwrapped")
    tokens = [tok.id_to_token(i) for i in ids]
    assert tokens[0] == "The"
    assert any(t.startswith("##") for t in tokens), tokens
    assert all(not t.startswith("##") for t in (tokens[0], tokens[1])), "a word starts with a piece without ##"
    assert tok.decode(ids) == "The gardens unwrapped"  # ## pieces glue back onto their word


def test_wordpiece_unassemblable_word_is_one_unk(trained):
    tok = trained["wordpiece"]
    ids = tok.encode(f"the ab{UNSEEN_CHAR}cd dog")
    assert ids.tolist() == [tok.token_to_id("the"), tok.unk_id, tok.token_to_id("dog")]
    assert tok.decode(ids) == "the [UNK] dog"


def test_wordpiece_alphabet_must_fit_vocab_size():
    with pytest.raises(ValueError, match="vocab_size=20 is too small for a wordpiece tokenizer on this corpus"):
        train_tokenizer("wordpiece", ["abcdefghijklmnopqrstuvwxyz " * 3], vocab_size=20)


# --- unigram -------------------------------------------------------------------------------------


def test_unigram_pieces_mark_spaces_and_decode_back(trained):
    tok = trained["unigram"]
    text = "The children loved the bear"
    ids = tok.encode(text)
    tokens = [tok.id_to_token(i) for i in ids]
    assert tokens[0].startswith("\u2581") and tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text), "frequent words are few pieces"


def test_unigram_unseen_character_is_unk(trained):
    tok = trained["unigram"]
    ids = tok.encode(f"the{UNSEEN_CHAR}dog")
    assert tok.unk_id in ids
    assert tok.decode(ids) == "the[UNK]dog"


def test_unigram_scores_are_ordered(trained):
    # The canonical order (by score, then piece) is what makes the file deterministic.
    spec = trained["unigram"]._fields()["tokenizer"]["model"]
    scores = np.array([score for _, score in spec["vocab"][7:]])
    assert (np.diff(scores) <= 0).all() and spec["unk_id"] == 1
