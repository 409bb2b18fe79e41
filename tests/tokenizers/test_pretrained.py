"""PretrainedTokenizer: a Hugging Face tokenizer.json with its own special ids, checked against the HF libraries.

Everything is built here: a byte-level BPE trained by `tokenizers` on a few strings, saved
GPT-2 style (a bare tokenizer.json) or through transformers' save_pretrained (with a
tokenizer_config.json). The special tokens are added after training, so their ids are at the
end of the vocabulary, far from our fixed 0..6.
"""

import json
import pickle

import numpy as np
import pytest
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from research.tokenizers import ByteTokenizer, PretrainedTokenizer, load_tokenizer, train_tokenizer
from research.tokenizers.base import SPECIAL_TOKENS, AddedTokens

TRAIN = [
    "The little dog sat by the window and watched the rain.",
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé text: 中文字符, emoji 😀 and more.",
] * 3
SAMPLES = [
    "The dog sat by the window.",
    "def mul(a, b):\n    return a * b\n",
    "Ünïcödé: 中文, emoji 😀😀, a tab\there and   spaces",
    "never seen: ʬ ∂ ☃",
    "",
]
TAGS = ("<think>", "</think>")


def byte_bpe(special_tokens) -> hf.Tokenizer:
    """A small GPT-2-like byte-level BPE, with special_tokens added after the learned vocabulary."""
    tok = hf.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TRAIN, trainer=trainer)
    tok.add_special_tokens(list(special_tokens))
    return tok


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A bare tokenizer.json whose only special token is "<|endoftext|>" (GPT-2: bos = eos = unk, no pad)."""
    folder = tmp_path_factory.mktemp("gpt2")
    byte_bpe(["<|endoftext|>"]).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """transformers' save_pretrained folder: tokenizer.json + tokenizer_config.json naming the roles."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=byte_bpe(["<mask>"]), bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fast(hf_dir):
    """The HF library's own reading of hf_dir: the reference the tests compare against."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(hf_dir)


def copy_tokenizer_json(src, dst, **configs):
    """dst/tokenizer.json from src, plus each name=dict as dst/name.json."""
    dst.mkdir()
    (dst / "tokenizer.json").write_text((src / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    for name, config in configs.items():
        (dst / f"{name}.json").write_text(json.dumps(config))
    return dst / "tokenizer.json"


# --- GPT-2 style: roles by name ---------------------------------------------------------------------


def test_gpt2_style_roles_by_name_and_pad_falls_back_to_eos(gpt2_dir):
    ref = hf.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    eot = ref.token_to_id("<|endoftext|>")
    assert eot == ref.get_vocab_size() - 1 and eot not in range(len(SPECIAL_TOKENS))
    tok = PretrainedTokenizer.from_file(gpt2_dir / "tokenizer.json")
    assert tok.type_name == "pretrained" and tok.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (eot, eot, eot, eot)
    assert tok.hf_special_tokens() == {"unk": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"}
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.tolist() == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text  # byte-level: lossless
        assert tok.encode(text, add_bos=True, add_eos=True).tolist() == [eot, *ids.tolist(), eot]
        assert tok.decode([eot, *ids.tolist(), eot]) == text
        assert tok.decode([eot, *ids.tolist()], skip_special=False) == ref.decode([eot, *ids.tolist()], False)
    batch = tok.encode_batch(SAMPLES, length=64)
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["input_ids"][padding] == eot).all()
    assert tok.id_to_token(eot) == "<|endoftext|>" and tok.token_to_id("<|endoftext|>") == eot
    assert tok.token_to_id("no such token") is None
    with pytest.raises(ValueError, match="outside"):
        tok.id_to_token(tok.vocab_size)


@pytest.mark.parametrize("role", ["cls", "sep", "mask"])
def test_a_missing_role_is_a_clear_error_not_another_id(gpt2_dir, role):
    tok = PretrainedTokenizer.from_file(gpt2_dir / "tokenizer.json")
    with pytest.raises(
        ValueError, match=rf"{role}_id: the pretrained tokenizer from .*tokenizer.json .*no {role} token"
    ):
        getattr(tok, f"{role}_id")
    with pytest.raises(ValueError, match=f"no {role} token"):
        getattr(tok.with_added_tokens(TAGS), f"{role}_id")


def test_encode_batch_with_cls_or_sep_on_gpt2_style_raises(gpt2_dir):
    tok = PretrainedTokenizer.from_file(gpt2_dir / "tokenizer.json")
    with pytest.raises(ValueError, match="no cls token"):
        tok.encode_batch(["hi"], length=8, add_cls=True)
    with pytest.raises(ValueError, match="no sep token"):
        tok.encode_batch(["hi"], length=8, add_sep=True)


# --- transformers' save_pretrained: roles from tokenizer_config.json -------------------------------------


def test_roles_come_from_tokenizer_config_and_match_transformers(hf_dir, fast):
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["pad_token"] == "<pad>"
    tok = load_tokenizer(hf_dir / "tokenizer.json")  # a raw tokenizer.json loads as pretrained
    assert type(tok) is PretrainedTokenizer
    expected = (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id, fast.unk_token_id)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == expected
    assert len(set(expected)) == 4 and not set(expected) & set(range(len(SPECIAL_TOKENS)))
    assert tok.mask_id == fast.convert_tokens_to_ids("<mask>")  # not in the config: found by name
    assert tok.vocab_size == len(fast)
    # What masked-LM corruption skips: the library's special ids and every role, wherever they sit (<mask> is found
    # by name, so transformers does not list it).
    assert tok.special_ids == tuple(sorted({*fast.all_special_ids, tok.mask_id}))
    assert PretrainedTokenizer.from_file(hf_dir).hf_special_tokens() == tok.hf_special_tokens()  # a folder works too


def test_encode_decode_and_batches_match_transformers(hf_dir, fast):
    tok = load_tokenizer(hf_dir / "tokenizer.json")
    texts = [*SAMPLES, "a special token in the text: </s> stays one token, like in the library"]
    for text in texts:
        ids = tok.encode(text).tolist()
        assert ids == fast.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == fast.decode(ids, skip_special_tokens=True)
        with_specials = tok.encode(text, add_bos=True, add_eos=True).tolist()
        assert with_specials == [fast.bos_token_id, *ids, fast.eos_token_id]
        assert tok.decode(with_specials) == fast.decode(with_specials, skip_special_tokens=True)
        assert tok.decode(with_specials, skip_special=False) == fast.decode(with_specials, skip_special_tokens=False)
    for text in SAMPLES:
        assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
    batch = tok.encode_batch(SAMPLES, length=40, truncate=True)
    ref = fast(SAMPLES, add_special_tokens=False, padding="max_length", truncation=True, max_length=40)
    assert batch["input_ids"].tolist() == ref["input_ids"]
    assert batch["attention_mask"].tolist() == ref["attention_mask"]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_id).all()
    assert (batch["attention_mask"] == 0).any()


def test_padding_and_truncation_in_the_file_do_not_cut_encode(gpt2_dir, tmp_path):
    ref = hf.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    ref.enable_truncation(3)
    ref.enable_padding(length=50)
    (tmp_path / "t").mkdir()
    ref.save(str(tmp_path / "t" / "tokenizer.json"))
    tok = PretrainedTokenizer.from_file(tmp_path / "t" / "tokenizer.json")
    ref.no_truncation()
    ref.no_padding()
    assert tok.encode(SAMPLES[0]).tolist() == ref.encode(SAMPLES[0], add_special_tokens=False).ids
    assert len(tok.encode(SAMPLES[0])) > 3


# --- the resolution order ------------------------------------------------------------------------------


def test_config_json_ids_when_there_is_no_tokenizer_config(hf_dir, fast, tmp_path):
    s, eos, pad = (fast.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>"))
    path = copy_tokenizer_json(hf_dir, tmp_path / "m", config={"bos_token_id": s, "eos_token_id": [eos, s]})
    tok = PretrainedTokenizer.from_file(path)
    assert (tok.bos_id, tok.eos_id) == (s, eos)  # a list of eos ids: the first
    assert tok.pad_id == pad and tok.unk_id == fast.unk_token_id  # named by neither file: by name


def test_tokenizer_config_wins_over_config_json_and_null_means_absent(hf_dir, fast, tmp_path):
    s, eos, pad = (fast.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>"))
    path = copy_tokenizer_json(
        hf_dir,
        tmp_path / "m",
        tokenizer_config={"eos_token": {"content": "<s>", "special": True}, "pad_token": None, "mask_token": None},
        config={"eos_token_id": eos, "pad_token_id": pad},
    )
    tok = PretrainedTokenizer.from_file(path)
    assert tok.eos_id == s  # tokenizer_config.json, as {"content": ...}
    assert tok.pad_id == s  # null: no pad token, so the eos id, though "<pad>" exists and config.json names it
    assert "pad" not in tok.hf_special_tokens()
    with pytest.raises(ValueError, match="no mask token"):
        _ = tok.mask_id


def test_skip_special_drops_role_tokens_the_library_does_not_flag_special(hf_dir, tmp_path):
    plain = hf.Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode("dog").tokens[-1]  # a vocabulary entry
    path = copy_tokenizer_json(hf_dir, tmp_path / "m", tokenizer_config={"eos_token": plain, "unk_token": "<unk>"})
    tok = PretrainedTokenizer.from_file(path)
    assert tok.eos_id == tok.token_to_id(plain)
    ids = tok.encode("a cat", add_eos=True)
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "a cat"
    assert tok.decode(ids, skip_special=False) == "a cat" + tok.decode([tok.eos_id], skip_special=False)


# --- files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("added", [(), TAGS])
@pytest.mark.parametrize("which", ["gpt2", "hf"])
def test_save_load_round_trip(request, tmp_path, which, added):
    src = request.getfixturevalue(f"{which}_dir")
    base = PretrainedTokenizer.from_file(src / "tokenizer.json")
    original = base.with_added_tokens(added)
    original.save(tmp_path / "tok.json")
    spec = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    assert spec["type"] == "pretrained" and spec["version"] == 1
    roles = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
    assert spec["special_tokens"] == {role: base.hf_special_tokens().get(role) for role in roles}
    assert spec["tokenizer"]["model"]["type"] == "BPE"
    assert spec.get("added_tokens", []) == list(added)
    again = load_tokenizer(tmp_path / "tok.json")
    assert type(again) is type(original) and again.vocab_size == original.vocab_size
    for role in ("pad", "unk", "bos", "eos"):
        assert getattr(again, f"{role}_id") == getattr(original, f"{role}_id") == getattr(base, f"{role}_id")
    for text in [*SAMPLES, "<think>2+2</think>4"]:
        assert again.encode(text, add_eos=True).tolist() == original.encode(text, add_eos=True).tolist()
        assert again.decode(again.encode(text)) == text
    if added:
        assert isinstance(again, AddedTokens) and again.token_to_id("<think>") == base.vocab_size
        assert again.encode("<think>").tolist() == [base.vocab_size]
    again.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "tok.json").read_bytes()
    assert type(PretrainedTokenizer.load(tmp_path / "tok.json")) is type(original)
    with pytest.raises(ValueError, match="holds a 'pretrained' tokenizer, not a 'byte' one"):
        ByteTokenizer.load(tmp_path / "tok.json")
    assert pickle.loads(pickle.dumps(again)).encode(SAMPLES[2]).tolist() == again.encode(SAMPLES[2]).tolist()


def test_added_tokens_keep_the_pretrained_special_ids(gpt2_dir):
    base = PretrainedTokenizer.from_file(gpt2_dir / "tokenizer.json")
    tok = base.with_added_tokens(TAGS)
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.unk_id) == (base.eos_id,) * 4
    assert tok.special_tokens == base.special_tokens == ("<|endoftext|>",)
    assert tok.special_ids == base.special_ids == (base.eos_id,)  # the added tags are text, not special
    ids = tok.encode("<think>hi</think>", add_eos=True).tolist()
    assert ids[0] == base.vocab_size and ids[-1] == base.eos_id
    assert tok.decode(ids) == "<think>hi</think>"


def test_raw_tokenizer_json_is_refused_by_other_kinds(gpt2_dir):
    assert type(PretrainedTokenizer.load(gpt2_dir / "tokenizer.json")) is PretrainedTokenizer
    with pytest.raises(ValueError, match="holds a 'pretrained' tokenizer"):
        ByteTokenizer.load(gpt2_dir / "tokenizer.json")


# --- errors ---------------------------------------------------------------------------------------------


def test_role_token_not_in_the_vocabulary(hf_dir, tmp_path):
    path = copy_tokenizer_json(hf_dir, tmp_path / "m", tokenizer_config={"bos_token": "<nope>", "eos_token": "</s>"})
    with pytest.raises(ValueError, match=r"tokenizer_config.json: bos_token '<nope>' \(the bos token\) is not in"):
        PretrainedTokenizer.from_file(path)


def test_config_json_id_outside_the_vocabulary(hf_dir, tmp_path):
    path = copy_tokenizer_json(hf_dir, tmp_path / "m", config={"eos_token_id": 10**6})
    with pytest.raises(ValueError, match=r"config.json: eos_token_id=1000000 \(the eos token\) is not an id"):
        PretrainedTokenizer.from_file(path)


def test_no_eos_and_no_pad_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    byte_bpe(["<s>", "<unk>"]).save(str(tmp_path / "m" / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"m/tokenizer.json: a pretrained tokenizer needs an eos or pad token"):
        PretrainedTokenizer.from_file(tmp_path / "m" / "tokenizer.json")
    with pytest.raises(ValueError, match="needs an eos or pad token"):
        load_tokenizer(tmp_path / "m" / "tokenizer.json")


def test_a_saved_file_whose_role_token_is_gone_is_corrupt(gpt2_dir, tmp_path):
    PretrainedTokenizer.from_file(gpt2_dir / "tokenizer.json").save(tmp_path / "tok.json")
    spec = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    spec["special_tokens"]["eos"] = "</s>"
    (tmp_path / "bad.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.json is corrupt: .*the eos token '</s>' is not in the tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    spec["special_tokens"] = list(SPECIAL_TOKENS)
    (tmp_path / "bad.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json is corrupt: .*special_tokens must map"):
        load_tokenizer(tmp_path / "bad.json")


def test_a_pretrained_tokenizer_is_not_trained():
    with pytest.raises(ValueError, match="a pretrained tokenizer is loaded from a Hugging Face tokenizer.json"):
        train_tokenizer("pretrained", TRAIN, vocab_size=300)
    with pytest.raises(ValueError, match="not trained"):
        PretrainedTokenizer.train(TRAIN, vocab_size=300)


def test_not_a_tokenizer_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
        PretrainedTokenizer.from_file(tmp_path / "x.json")
