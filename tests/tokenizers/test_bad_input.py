"""Bad input gives an error that names the problem: training settings, corpora, files."""

import json

import pytest

from research.tokenizers import (
    SPECIAL_TOKENS,
    TOKENIZER_KINDS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from tests.tokenizers.conftest import ENGLISH

every_kind = pytest.mark.parametrize("kind", TOKENIZER_KINDS)
# The smallest vocab_size each kind accepts: 7 specials (+ 256 bytes where bytes are built in) + 1 learned token.
SMALLEST = {"byte": 263, "char": 263, "bpe": 263, "word": 8, "wordpiece": 8, "unigram": 8}

# --- training ------------------------------------------------------------------------------------


@every_kind
@pytest.mark.parametrize(
    "texts, message",
    [
        ([], "the training corpus is empty"),
        (iter(()), "the training corpus is empty"),
        (["", "", ""], r"only empty strings \(3 of them\)"),
    ],
)
def test_empty_corpus(kind, texts, message):
    with pytest.raises(ValueError, match=message):
        train_tokenizer(kind, texts, vocab_size=1000)


@every_kind
def test_vocab_size_too_small_for_the_specials(kind):
    smallest = SMALLEST[kind]
    with pytest.raises(ValueError, match=f"vocab_size={smallest - 1} is too small for a {kind} tokenizer"):
        train_tokenizer(kind, ENGLISH, vocab_size=smallest - 1)
    with pytest.raises(ValueError, match="vocab_size=3 is too small"):
        train_tokenizer(kind, ENGLISH, vocab_size=3)


def test_vocab_size_messages_say_what_it_pays_for():
    with pytest.raises(ValueError, match="7 special tokens \\+ 256 fallback bytes need at least 263"):
        train_tokenizer("char", ENGLISH, vocab_size=100)
    with pytest.raises(ValueError, match="7 special tokens \\+ the 256-byte alphabet need at least 263"):
        train_tokenizer("bpe", ENGLISH, vocab_size=262)


@every_kind
def test_training_text_with_invalid_utf8_names_document_and_position(kind):
    with pytest.raises(ValueError, match=r"texts\[2\] is bytes that are not valid UTF-8: .* at byte position 3"):
        train_tokenizer(kind, ["fine", b"also fine", b"bad\xffbyte"], vocab_size=1000)


@every_kind
def test_other_bad_training_arguments(kind):
    with pytest.raises(TypeError, match="not a single string"):
        train_tokenizer(kind, "a whole corpus in one string", vocab_size=1000)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        train_tokenizer(kind, ["ok", 42], vocab_size=1000)
    with pytest.raises(ValueError, match="min_frequency=0 must be an int >= 1"):
        train_tokenizer(kind, ENGLISH, vocab_size=1000, min_frequency=0)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_tokenizer(kind, ENGLISH, vocab_size=300.0)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'; choose one of .*'wordpiece'"):
        train_tokenizer("sentencepiece", ENGLISH, vocab_size=1000)


def test_word_corpus_of_only_whitespace():
    with pytest.raises(ValueError, match="no words, only whitespace"):
        train_tokenizer("word", [" \n", "\t"], vocab_size=100)


# --- files ---------------------------------------------------------------------------------------


def write(path, spec) -> str:
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return str(path)


def header(kind) -> dict:
    return {"type": kind, "version": 1, "special_tokens": list(SPECIAL_TOKENS)}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "corrupt: expected a JSON object with a 'type'"),
        ('{"version": 1}', "corrupt: expected a JSON object with a 'type'"),
        ({**header("byte"), "type": "sentencepiece"}, "has type 'sentencepiece'; known types"),
        ({**header("byte"), "version": 99}, "has version 99; this code reads 1"),
        # A file from before the shared special tokens: its byte ids started at 3, not 7.
        ({"type": "byte", "version": 1}, "special_tokens None.*other special ids"),
        ({**header("char"), "special_tokens": ["[PAD]", "[BOS]", "[EOS]"]}, "special_tokens"),
        (header("char"), "corrupt: KeyError: 'chars'"),
        ({**header("char"), "chars": ["ab"]}, "corrupt: .*single characters, got 'ab'"),
        ({**header("char"), "chars": ["a", "a"]}, "corrupt: .*lists a character twice"),
        ({**header("word"), "words": ["two words"]}, "corrupt: .*single words .*got 'two words'"),
        ({**header("bpe"), "tokenizer": {"model": {"type": "BPE", "vocab": "garbage"}}}, "corrupt: .*cannot build"),
        ({**header("unigram"), "tokenizer": "garbage"}, "corrupt: .*must hold a Unigram model, found None"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = write(tmp_path / "tok.json", content)
    with pytest.raises(ValueError, match=message) as info:
        load_tokenizer(path)
    assert path in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read tokenizer file .*nope.json"):
        ByteTokenizer.load(tmp_path / "nope.json")


def test_a_file_of_another_kind_is_refused_naming_both(trained, tmp_path):
    path = tmp_path / "bpe.json"
    trained["bpe"].save(path)
    with pytest.raises(ValueError, match=f"tokenizer file {path} holds a 'bpe' tokenizer, not a 'char' one"):
        CharTokenizer.load(path)
    with pytest.raises(ValueError, match="holds a 'bpe' tokenizer, not a 'wordpiece' one"):
        WordPieceTokenizer.load(path)
    assert isinstance(BPETokenizer.load(path), BPETokenizer)


def test_a_subword_file_with_the_wrong_model_inside(trained, tmp_path):
    spec = json.loads(json.dumps({**header("bpe"), **trained["wordpiece"]._fields()}))
    path = write(tmp_path / "tok.json", spec)
    with pytest.raises(ValueError, match=f"{path} is corrupt: .*must hold a BPE model, found 'WordPiece'"):
        load_tokenizer(path)


def test_a_subword_file_with_specials_out_of_place(trained, tmp_path):
    spec = {**header("wordpiece"), **trained["wordpiece"]._fields()}
    vocab = spec["tokenizer"]["model"]["vocab"]
    vocab["[BOS]"], vocab["[EOS]"] = vocab["[EOS]"], vocab["[BOS]"]
    path = write(tmp_path / "tok.json", spec)
    with pytest.raises(ValueError, match=f"tokenizer file {path}: special token \\[BOS\\] must have id 5"):
        load_tokenizer(path)
