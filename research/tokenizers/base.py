"""What every tokenizer shares: fixed special ids, input checks, padded batches, the JSON file.

A tokenizer kind supplies only its vocabulary: `_encode(text) -> ids`, `_decode(ids)
-> text`, `id_to_token` / `token_to_id`, `vocab_size`, `_fields()` / `_from_fields()`
for its part of the file, and `_train(corpus, vocab_size, min_frequency)`. Everything
that must behave the same for every kind lives here, so a model, a data pipeline or a
test can swap one tokenizer for another without noticing anything but the ids. `with_added_tokens`
puts whole strings (the `<think>` tags) after any kind's vocabulary, one id each (AddedTokens, below).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
from etils import epath

# Every kind puts these at ids 0..6 in this order, so code can rely on the ids alone.
# PAD is 0 because the data packer treats a zero-filled array as padding.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")
NUM_SPECIAL = len(SPECIAL_TOKENS)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID, EOS_ID = range(NUM_SPECIAL)
# What `decode(skip_special=True)` drops: structure, not text. [UNK] is kept because it
# stands for text that was there; dropping it would silently delete words.
CONTROL_IDS = np.array([PAD_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID, EOS_ID])

FILE_VERSION = 1

_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


def byte_token(value: int) -> str:
    """The name of the token for one raw byte, as SentencePiece writes it: <0x41>."""
    return f"<0x{value:02X}>"


def parse_byte_token(token: str) -> int | None:
    """The byte a `byte_token` name stands for, or None for any other string."""
    match = _BYTE_TOKEN.fullmatch(token)
    return int(match.group(1), 16) if match else None


def utf8_bytes(text: str, what: str = "text") -> bytes:
    """text.encode("utf-8"), with a lone surrogate reported as a ValueError naming its position."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} is not valid Unicode: lone surrogate {text[e.start]!r} at position {e.start}"
        ) from None


def as_text(text, what: str = "text") -> str:
    """A str from a str or from UTF-8 bytes; anything else is an error that says what is wrong."""
    if isinstance(text, str):
        if not text.isascii():
            utf8_bytes(text, what)  # only to reject lone surrogates, which no kind could round-trip
        return text
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{what} is bytes that are not valid UTF-8: {e.reason} at byte position {e.start}; "
                "pass a str (only the byte tokenizer takes arbitrary bytes)"
            ) from None
    raise TypeError(f"{what} must be a str (or UTF-8 bytes), got {type(text).__name__}")


def training_corpus(texts: Iterable) -> list[str]:
    """The training texts as a list of str, checked: not a lone str, not empty, not only empty strings."""
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be an iterable of documents (strings), not a single string")
    corpus = [as_text(text, f"texts[{i}]") for i, text in enumerate(texts)]
    if not corpus:
        raise ValueError("the training corpus is empty: texts yielded no documents")
    if not any(corpus):
        raise ValueError(f"the training corpus holds only empty strings ({len(corpus)} of them)")
    return corpus


class Tokenizer:
    """Text <-> int32 ids, with the shared special tokens at ids 0..6 (see SPECIAL_TOKENS)."""

    type_name: ClassVar[str]  # the "type" in the saved file; set by each kind
    min_vocab_size: ClassVar[int]  # the smallest vocab_size `train` accepts
    vocab_floor: ClassVar[str]  # what min_vocab_size pays for, for the error message
    vocab_size: int
    # False for a kind whose special tokens are its own (pretrained): its file holds them by role, not SPECIAL_TOKENS.
    fixed_special_ids: ClassVar[bool] = True

    special_tokens = SPECIAL_TOKENS
    pad_id, unk_id, cls_id, sep_id, mask_id, bos_id, eos_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID, EOS_ID
    # Every id that is not text (sorted): what masked-LM corruption never targets or draws.
    special_ids: tuple[int, ...] = tuple(range(NUM_SPECIAL))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "type_name" in cls.__dict__:
            _KINDS[cls.type_name] = cls

    # --- what each kind implements ---------------------------------------------------------------

    def _encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, ids: np.ndarray) -> str:
        """Text for in-range ids; special ids that reach here are written as their names."""
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string, or None when it is not in the vocabulary."""
        raise NotImplementedError

    def _fields(self) -> dict:
        """This kind's part of the saved file (JSON-serialisable, deterministic)."""
        return {}

    @classmethod
    def _from_fields(cls, fields: dict) -> Tokenizer:
        raise NotImplementedError

    @classmethod
    def _train(cls, corpus: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
        raise NotImplementedError

    # --- the shared interface --------------------------------------------------------------------

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """int32 ids [len] for one text (a str, or bytes holding valid UTF-8)."""
        return self._with_bos_eos(self._encode(as_text(text)), add_bos, add_eos)

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """Text for a sequence of ids; skip_special drops every special token except [UNK]."""
        ids = self._checked_ids(ids)
        if skip_special:
            ids = ids[~np.isin(ids, CONTROL_IDS)]
        return self._decode(ids)

    def encode_batch(
        self, texts: Iterable, *, length: int, add_cls: bool = False, add_sep: bool = False, truncate: bool = True
    ) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int32 [len(texts), length], padded with [PAD] (mask 0).

        add_cls / add_sep wrap each text BERT-style; truncation cuts the text, never the
        [CLS] / [SEP] around it. With truncate=False a text that does not fit is an error.
        """
        if isinstance(texts, str | bytes):
            raise TypeError("encode_batch takes a list of texts; for one text use encode")
        reserved = int(add_cls) + int(add_sep)
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < max(1, reserved):
            raise ValueError(f"length={length!r} must be an int >= {max(1, reserved)} (room for [CLS]/[SEP] if added)")
        rows = []
        for i, text in enumerate(texts):
            try:
                ids = self.encode(text)
            except ValueError as e:
                raise ValueError(f"texts[{i}]: {e}") from None
            if len(ids) + reserved > length:
                if not truncate:
                    raise ValueError(
                        f"texts[{i}] is {len(ids) + reserved} tokens long, more than length={length}; "
                        "pass truncate=True or a larger length"
                    )
                ids = ids[: length - reserved]
            # Read cls_id / sep_id only when used: a pretrained tokenizer may have neither.
            rows.append(([self.cls_id] if add_cls else []) + ids.tolist() + ([self.sep_id] if add_sep else []))
        input_ids = np.full((len(rows), length), self.pad_id, np.int32)
        attention_mask = np.zeros((len(rows), length), np.int32)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def save(self, path: str | os.PathLike) -> None:
        """Writes one JSON file: {"type", "version", "special_tokens", ...this kind's fields}.

        A kind without fixed special ids writes its own "special_tokens" among its fields.
        """
        spec = {"type": self.type_name, "version": FILE_VERSION, "special_tokens": list(SPECIAL_TOKENS)}
        spec.update(self._fields())
        # etils: a gs:// (or any etils) workdir as well as a local one.
        epath.Path(path).write_text(json.dumps(spec, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Reads a file written by `save`; a subclass refuses a file holding another kind."""
        spec = _read_file(path)
        if cls is not Tokenizer and spec["type"] != cls.type_name:
            raise ValueError(
                f"tokenizer file {path} holds a {spec['type']!r} tokenizer, not a {cls.type_name!r} one "
                f"({cls.__name__}); load_tokenizer(path) loads whatever kind a file holds"
            )
        return _build(spec, path)

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        """Learns a vocabulary of at most vocab_size ids (specials included) from texts."""
        corpus = training_corpus(texts)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        if vocab_size < cls.min_vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a {cls.type_name} tokenizer: "
                f"{cls.vocab_floor} need at least {cls.min_vocab_size}"
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int | np.integer) or min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency!r} must be an int >= 1")
        tokenizer = cls._train(corpus, int(vocab_size), int(min_frequency))
        tokenizer._check_special_tokens(f"a {cls.type_name} tokenizer just trained")
        if tokenizer.vocab_size > vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a {cls.type_name} tokenizer on this corpus: "
                f"its alphabet alone needs {tokenizer.vocab_size} ids"
            )
        return tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    def with_added_tokens(self, tokens) -> Tokenizer:
        """This tokenizer with whole strings as extra ids after its vocabulary (AddedTokens)."""
        tokens = tuple(tokens)
        return AddedTokens(self, tokens) if tokens else self

    # --- helpers for the kinds -------------------------------------------------------------------

    def _with_bos_eos(self, ids: np.ndarray, add_bos: bool, add_eos: bool) -> np.ndarray:
        ids = np.asarray(ids, np.int32)
        if add_bos or add_eos:
            head = np.array([self.bos_id] if add_bos else [], np.int32)
            tail = np.array([self.eos_id] if add_eos else [], np.int32)
            ids = np.concatenate([head, ids, tail])
        return ids

    def _checked_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0:
            return np.zeros(0, np.int64)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got an array of {ids.dtype}")
        ids = ids.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"token id {int(bad[0])} is outside the {self.type_name} vocabulary [0, {self.vocab_size})"
            )
        return ids

    def _check_id(self, token_id) -> int:
        if not 0 <= int(token_id) < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the {self.type_name} vocabulary [0, {self.vocab_size})")
        return int(token_id)

    def _check_special_tokens(self, where: str) -> None:
        for token_id, name in enumerate(SPECIAL_TOKENS):
            if self.id_to_token(token_id) != name or self.token_to_id(name) != token_id:
                raise ValueError(
                    f"{where}: special token {name} must have id {token_id}, "
                    f"but id {token_id} is {self.id_to_token(token_id)!r} and {name} is id {self.token_to_id(name)}"
                )


# The file's "type" -> tokenizer class; each kind adds itself when its class is defined.
_KINDS: dict[str, type[Tokenizer]] = {}


def min_vocab_size(kind: str) -> int:
    """The smallest vocab_size `train_tokenizer(kind, ...)` accepts (a corpus may need more)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {tuple(_KINDS)}")
    return _KINDS[kind].min_vocab_size


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A tokenizer of `kind` learned from texts; see each kind's class for what it learns."""
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {tuple(_KINDS)}")
    return _KINDS[kind].train(texts, vocab_size=vocab_size, min_frequency=min_frequency)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer that a file written by `save` describes, of whatever kind it holds.

    A Hugging Face tokenizer.json (no "type", a "model") loads as PretrainedTokenizer.from_file(path).
    """
    return Tokenizer.load(path)


# What _read_file returns for a Hugging Face tokenizer.json, which only the pretrained kind reads.
_HF_TOKENIZER_JSON = "hugging_face_tokenizer_json"


def _read_file(path) -> dict:
    try:
        spec = json.loads(epath.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
    if isinstance(spec, dict) and "type" not in spec and "model" in spec and "pretrained" in _KINDS:
        return {"type": "pretrained", _HF_TOKENIZER_JSON: True}  # _build reads it with its sibling files
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"tokenizer file {path} is corrupt: expected a JSON object with a 'type', got {spec!r:.200}")
    if spec["type"] not in _KINDS:
        raise ValueError(f"tokenizer file {path} has type {spec['type']!r}; known types: {tuple(_KINDS)}")
    if spec.get("version") != FILE_VERSION:
        raise ValueError(f"tokenizer file {path} has version {spec.get('version')!r}; this code reads {FILE_VERSION}")
    if _KINDS[spec["type"]].fixed_special_ids and spec.get("special_tokens") != list(SPECIAL_TOKENS):
        # Files from before the shared special tokens (a byte tokenizer with PAD=0 BOS=1 EOS=2
        # and bytes from id 3) have none; reading them with today's ids would garble every token.
        raise ValueError(
            f"tokenizer file {path} has special_tokens {spec.get('special_tokens')!r}, not {list(SPECIAL_TOKENS)}: "
            "it was written with other special ids, which this code cannot read"
        )
    return spec


def _build(spec: dict, path) -> Tokenizer:
    if spec.get(_HF_TOKENIZER_JSON) is True:
        return _KINDS["pretrained"].from_file(path)
    try:
        added = spec.get("added_tokens", [])
        if not isinstance(added, list):
            raise TypeError(f"added_tokens must be a list of strings, got {added!r:.80}")
        tokenizer = _KINDS[spec["type"]]._from_fields(spec).with_added_tokens(added)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"tokenizer file {path} is corrupt: {type(e).__name__}: {e}") from e
    tokenizer._check_special_tokens(f"tokenizer file {path}")
    return tokenizer


# --- Added tokens ---------------------------------------------------------------------------------
# Added tokens: whole strings (e.g. `<think>`, `</answer>`) that become one id each, after any kind's vocabulary.
#
#     tok = ByteTokenizer().with_added_tokens(("<think>", "</think>"))
#     tok.encode("<think>2+2</think>")   # [263, 57, 50, 57, 264]: the tags are single ids 263, 264
#
# The base tokenizer is unchanged: its ids keep their meaning, so a model trained
# with it is the same model with a few new embedding rows. Encoding splits the text
# at every occurrence of an added token (the longest match first) and encodes the
# pieces between with the base; decoding writes added tokens back as their text,
# also with skip_special=True, because they are content the verifiers read, not
# structure. They are saved in the tokenizer file under "added_tokens"; a file
# without that key (every file written before) loads as before.


def check_added_tokens(tokens, field: str = "added_tokens") -> tuple[str, ...]:
    tokens = tuple(tokens)
    for token in tokens:
        if not isinstance(token, str) or not token or token != token.strip():
            raise ValueError(f"{field}: {token!r} must be a non-empty string without surrounding whitespace")
        if token in SPECIAL_TOKENS:
            raise ValueError(f"{field}: {token!r} is already a shared special token")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{field}: {list(tokens)} names a token twice")
    return tokens


def _forward_to_base(name: str) -> property:
    return property(lambda self: getattr(self.base, name), doc=f"The base tokenizer's {name}.")


class AddedTokens(Tokenizer):
    """`base` with `tokens` appended as ids base.vocab_size, base.vocab_size + 1, ..."""

    # The special ids are the base's: the fixed ones for our kinds, a pretrained tokenizer's own.
    special_tokens = _forward_to_base("special_tokens")
    special_ids = _forward_to_base("special_ids")
    pad_id = _forward_to_base("pad_id")
    unk_id = _forward_to_base("unk_id")
    cls_id = _forward_to_base("cls_id")
    sep_id = _forward_to_base("sep_id")
    mask_id = _forward_to_base("mask_id")
    bos_id = _forward_to_base("bos_id")
    eos_id = _forward_to_base("eos_id")

    def __init__(self, base: Tokenizer, tokens):
        if isinstance(base, AddedTokens):
            raise ValueError("the tokenizer already has added tokens: add them all at once")
        self.base, self.added = base, check_added_tokens(tokens)
        self.type_name = base.type_name  # the file's kind stays the base's
        self.vocab_size = base.vocab_size + len(self.added)
        self.added_ids = {token: base.vocab_size + i for i, token in enumerate(self.added)}
        for token in self.added:
            if base.token_to_id(token) is not None:
                raise ValueError(f"added_tokens: {token!r} is already in the {base.type_name} vocabulary")
        # Longest first, so "</think>" is not read as "<" + ... when "<" were also added.
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")

    def _encode(self, text: str) -> np.ndarray:
        pieces = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:  # the separators re.split keeps: added tokens
                pieces.append(np.array([self.added_ids[piece]], np.int32))
            elif piece:
                pieces.append(np.asarray(self.base.encode(piece), np.int32))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    def encode(self, text, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        if isinstance(text, bytes | bytearray | memoryview):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:  # raw bytes (the byte kind takes them): no added token is matched
                return self.base.encode(text, add_bos=add_bos, add_eos=add_eos)
        if not isinstance(text, str):
            return self.base.encode(text)  # raises the base's own TypeError
        return self._with_bos_eos(self._encode(as_text(text)), add_bos, add_eos)

    def decode(self, ids, *, skip_special: bool = True) -> str:
        ids = self._checked_ids(ids)
        out, run = [], []
        for i in ids.tolist():
            if i >= self.base.vocab_size:
                out.append(self.base.decode(run, skip_special=skip_special) if run else "")
                out.append(self.added[i - self.base.vocab_size])
                run = []
            else:
                run.append(i)
        out.append(self.base.decode(run, skip_special=skip_special) if run else "")
        return "".join(out)

    def id_to_token(self, token_id: int) -> str:
        token_id = self._check_id(token_id)
        if token_id >= self.base.vocab_size:
            return self.added[token_id - self.base.vocab_size]
        return self.base.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.added_ids.get(token, self.base.token_to_id(token))

    def with_added_tokens(self, tokens) -> Tokenizer:
        tokens = tuple(tokens)
        if tokens == self.added:
            return self
        raise ValueError(f"the tokenizer already has added tokens {list(self.added)}; wanted {list(tokens)}")

    def _fields(self) -> dict:
        return {**self.base._fields(), "added_tokens": list(self.added)}

    def _check_special_tokens(self, where: str) -> None:
        self.base._check_special_tokens(where)  # added tokens never shadow the base's (see __init__)

    def __repr__(self) -> str:
        return f"{type(self.base).__name__}(vocab_size={self.vocab_size}, added_tokens={list(self.added)})"
