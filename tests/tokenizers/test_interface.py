"""The interface every kind shares: special ids, encode/decode, batches, files, determinism."""

import json
import pickle

import numpy as np
import pytest

from research import tokenizers
from research.tokenizers import SPECIAL_TOKENS, TOKENIZER_KINDS, load_tokenizer, train_tokenizer
from tests.tokenizers.conftest import CORPUS, VOCAB_SIZES

CLASSES = {
    "byte": tokenizers.ByteTokenizer,
    "char": tokenizers.CharTokenizer,
    "word": tokenizers.WordTokenizer,
    "bpe": tokenizers.BPETokenizer,
    "wordpiece": tokenizers.WordPieceTokenizer,
    "unigram": tokenizers.UnigramTokenizer,
}
SAMPLES = [
    "The dog sat by the window.",
    "def wrap(text, width=70):\n    return TextWrapper(width=width).wrap(text)\n",
    "Ünïcödé: 中文, emoji 😀, and a tab\there.",
    "",
]

every_kind = pytest.mark.parametrize("kind", TOKENIZER_KINDS)


def test_kinds_and_classes_agree(trained):
    assert set(CLASSES) == set(TOKENIZER_KINDS)
    for kind, tokenizer in trained.items():
        assert type(tokenizer) is CLASSES[kind] and tokenizer.type_name == kind


@every_kind
def test_special_tokens_have_fixed_ids(trained, kind):
    tok = trained[kind]
    ids = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.bos_id, tok.eos_id)
    assert ids == (0, 1, 2, 3, 4, 5, 6)
    assert SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")
    for token_id, name in enumerate(SPECIAL_TOKENS):
        assert tok.id_to_token(token_id) == name
        assert tok.token_to_id(name) == token_id
    assert tok.token_to_id("surely not a token \u2603\u2603") is None


@every_kind
def test_vocab_size_matches_the_tokens(trained, kind):
    tok = trained[kind]
    assert 7 < tok.vocab_size <= VOCAB_SIZES[kind]
    tokens = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert len(set(tokens)) == tok.vocab_size
    assert all(tok.token_to_id(t) == i for i, t in enumerate(tokens))
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is outside"):
        tok.id_to_token(tok.vocab_size)


@every_kind
def test_encode_gives_int32_ids_in_range_and_adds_bos_eos(trained, kind):
    tok = trained[kind]
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert ((ids >= 0) & (ids < tok.vocab_size)).all()
        assert not np.isin(ids, [0, 2, 3, 4, 5, 6]).any(), "only code may put control tokens in a sequence"
        wrapped = tok.encode(text, add_bos=True, add_eos=True)
        assert wrapped.dtype == np.int32
        assert wrapped.tolist() == [tok.bos_id] + ids.tolist() + [tok.eos_id]
        assert tok.decode(wrapped) == tok.decode(ids)
    assert tok.encode("").tolist() == []
    assert tok.encode(b"The dog").tolist() == tok.encode("The dog").tolist()  # UTF-8 bytes are text too


@every_kind
def test_literal_special_names_in_text_stay_text(trained, kind):
    # A document that mentions "[PAD]" must not turn into padding (PAD=0 is what the packer drops).
    tok = trained[kind]
    ids = tok.encode("[PAD] [BOS] x[EOS]y [CLS][SEP][MASK] [UNK]")
    assert not np.isin(ids, [0, 2, 3, 4, 5, 6]).any()


@every_kind
def test_decode_skips_control_tokens_but_keeps_unk(trained, kind):
    tok = trained[kind]
    body = tok.encode("The dog sat").tolist()
    ids = [tok.bos_id, tok.cls_id] + body + [tok.sep_id, tok.mask_id, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == tok.decode(body)
    shown = tok.decode(ids, skip_special=False)
    for name in ("[BOS]", "[CLS]", "[SEP]", "[MASK]", "[EOS]", "[PAD]"):
        assert name in shown
    assert "[UNK]" in tok.decode(body + [tok.unk_id])
    assert tok.decode([]) == "" and tok.decode(np.zeros(0, np.int32)) == ""


@every_kind
@pytest.mark.parametrize("bad", [-1, "vocab_size", 10**6])
def test_decode_rejects_ids_outside_the_vocabulary(trained, kind, bad):
    tok = trained[kind]
    bad = tok.vocab_size if bad == "vocab_size" else bad
    with pytest.raises(ValueError, match=rf"token id {bad} is outside the {kind} vocabulary \[0, {tok.vocab_size}\)"):
        tok.decode([7, bad, 8])


@every_kind
def test_decode_rejects_non_integer_ids(trained, kind):
    with pytest.raises(ValueError, match="must be integers"):
        trained[kind].decode([7.0, 8.5])


@every_kind
def test_encode_batch_pads_with_pad_and_masks_it(trained, kind):
    tok = trained[kind]
    texts = ["The dog sat by the window.", "", "The bear"]
    batch = tok.encode_batch(texts, length=40)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 40)
    assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == np.int32
    for row, text in enumerate(texts):
        ids = tok.encode(text)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids.tolist()
        assert (batch["input_ids"][row, n:] == tok.pad_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (40 - n)


@every_kind
def test_encode_batch_wraps_in_cls_sep_and_truncates_the_text_only(trained, kind):
    tok = trained[kind]
    text = "The little dog sat by the window and watched the rain fall on the garden."
    ids = tok.encode(text).tolist()
    assert len(ids) > 6
    batch = tok.encode_batch([text, "The"], length=6, add_cls=True, add_sep=True)
    assert batch["input_ids"][0].tolist() == [tok.cls_id] + ids[:4] + [tok.sep_id]
    assert batch["attention_mask"][0].tolist() == [1] * 6
    short = tok.encode("The").tolist()
    assert batch["input_ids"][1].tolist() == [tok.cls_id] + short + [tok.sep_id] + [0] * (4 - len(short))
    assert tok.encode_batch([], length=5)["input_ids"].shape == (0, 5)


@every_kind
def test_encode_batch_without_truncation_names_length(trained, kind):
    tok = trained[kind]
    n = len(tok.encode(SAMPLES[0]))
    assert tok.encode_batch([SAMPLES[0]], length=n, truncate=False)["attention_mask"].all()
    with pytest.raises(ValueError, match=rf"texts\[1\] is {n + 1} tokens long, more than length={n}"):
        tok.encode_batch(["", SAMPLES[0]], length=n, add_sep=True, truncate=False)
    with pytest.raises(ValueError, match="length=1 must be an int >= 2"):
        tok.encode_batch(["a"], length=1, add_cls=True, add_sep=True)
    with pytest.raises(ValueError, match="length=0"):
        tok.encode_batch(["a"], length=0)
    with pytest.raises(TypeError, match="list of texts"):
        tok.encode_batch("one text", length=8)


@every_kind
def test_save_load_round_trip(trained, kind, tmp_path):
    tok = trained[kind]
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    spec = json.loads(text)
    assert text.count("\n") == 1, "one JSON object on one line"
    assert (spec["type"], spec["version"], spec["special_tokens"]) == (kind, 1, list(SPECIAL_TOKENS))
    for loaded in (load_tokenizer(path), CLASSES[kind].load(path)):
        assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
        for sample in SAMPLES:
            assert loaded.encode(sample).tolist() == tok.encode(sample).tolist()
            assert loaded.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))
        assert [loaded.id_to_token(i) for i in range(tok.vocab_size)] == [
            tok.id_to_token(i) for i in range(tok.vocab_size)
        ]
        loaded.save(tmp_path / "again.json")
        assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


@every_kind
def test_training_twice_writes_the_same_file(trained, kind, tmp_path):
    # WordPiece and Unigram need care here: their trainers walk hash maps in random order.
    trained[kind].save(tmp_path / "first.json")
    train_tokenizer(kind, CORPUS, vocab_size=VOCAB_SIZES[kind]).save(tmp_path / "second.json")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


@every_kind
def test_a_generator_corpus_trains_the_same_as_a_list(trained, kind):
    again = train_tokenizer(kind, (text for text in CORPUS), vocab_size=VOCAB_SIZES[kind])
    assert again.encode(SAMPLES[1]).tolist() == trained[kind].encode(SAMPLES[1]).tolist()


@every_kind
def test_bytes_with_invalid_utf8_name_the_position(trained, kind):
    tok = trained[kind]
    if kind == "byte":  # the byte tokenizer takes any bytes as they are
        assert tok.encode(b"ab\xffcd").tolist() == [ord("a") + 7, ord("b") + 7, 0xFF + 7, ord("c") + 7, ord("d") + 7]
        return
    with pytest.raises(ValueError, match="not valid UTF-8: invalid start byte at byte position 2"):
        tok.encode(b"ab\xffcd")
    with pytest.raises(
        ValueError,
        match=r"texts\[1\]: text is bytes that are not valid UTF-8: invalid continuation byte at byte position 1",
    ):
        tok.encode_batch([b"ok", b"o\xc3("], length=4)


@every_kind
def test_lone_surrogates_are_not_text(trained, kind):
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800' at position 2"):
        trained[kind].encode("ab\ud800")


@every_kind
def test_encode_rejects_non_text(trained, kind):
    with pytest.raises(TypeError, match="must be a str"):
        trained[kind].encode(123)


@every_kind
def test_pickles(trained, kind):
    # grain's worker processes receive the tokenizer inside the pickled map function.
    tok = trained[kind]
    again = pickle.loads(pickle.dumps(tok))
    assert type(again) is type(tok) and again.encode(SAMPLES[2]).tolist() == tok.encode(SAMPLES[2]).tolist()
