"""A Hugging Face pretrained tokenizer (a `tokenizer.json`) as one of our tokenizers, with its own special ids.

Our kinds put the special tokens at fixed ids ([PAD]=0 .. [EOS]=6); a pretrained vocabulary
has its own, wherever its authors put them (GPT-2's "<|endoftext|>" is id 50256). So this
kind keeps the vocabulary exactly as the file has it and gives each of the seven roles (pad,
unk, cls, sep, mask, bos, eos) the id of the token that plays it, or none:

    tok = PretrainedTokenizer.from_file("gpt2/tokenizer.json")   # or load_tokenizer(path)
    tok.eos_id, tok.pad_id            # 50256, 50256: GPT-2 has no pad token, see below
    tok.encode("Hi", add_eos=True)    # the library's ids for "Hi", then 50256
    tok.cls_id                        # ValueError: this tokenizer has no cls token

The roles come, per role, from the first of these that names one:

1. a sibling `tokenizer_config.json` (what transformers' save_pretrained writes), or the
   older `special_tokens_map.json`: "bos_token", "eos_token", ... as a string or as
   {"content": ...}; null there means the tokenizer has no such token;
2. a sibling `config.json` (the model's): "bos_token_id", "eos_token_id", ... (for a list
   of eos ids, the first);
3. by name, among the tokenizer's special added tokens: "<pad>", "[CLS]", "</s>",
   "<|endoftext|>" (GPT-2's bos, eos and unk), ... (see _NAMES).

Encoding is the library's with add_special_tokens=False: no post-processor [BOS] (our
encode(add_bos=True) adds the bos id), but, as in the library, a special token written in
the text is matched as that token. Decoding is the library's; skip_special drops the
library's special tokens and the role tokens other than unk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tokenizers as hf

from research.tokenizers.base import Tokenizer
from research.tokenizers.subword import _from_spec as subword_from_spec

ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")

# Role -> the names that play it in common pretrained vocabularies, most specific first; used only
# when neither config file names the role, and only among the tokenizer's special added tokens.
_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<PAD>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>", "<UNK>", "<|endoftext|>"),
    "cls": ("[CLS]", "<cls>", "<|cls|>"),
    "sep": ("[SEP]", "<sep>", "<|sep|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "[BOS]", "<|bos|>", "<|endoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[EOS]", "<|eos|>", "<|eot_id|>"),
}


def _role_id_property(role: str) -> property:
    def get(self) -> int:
        return self._role_id(role)

    get.__name__ = f"{role}_id"
    return property(get, doc=f"The id of the {role} token; a ValueError when this tokenizer has none.")


class PretrainedTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` loaded from a Hugging Face tokenizer.json, with its own special ids.

    The constructor's `special_tokens` maps each role in ROLES to the token string that
    plays it, or None (from_file works it out). pad_id, unk_id, cls_id, sep_id, mask_id,
    bos_id, eos_id are that token's id; reading one the tokenizer lacks is a ValueError
    naming the role. Without a pad token (GPT-2 has none) pad_id is eos_id: padding
    positions are masked anyway (attention_mask 0), so the id only has to exist. A
    tokenizer with neither an eos nor a pad token is refused. The wrapped tokenizer's
    padding and truncation are switched off. `source` (the file it was read from, if any)
    only names it in error messages.
    """

    type_name = "pretrained"
    fixed_special_ids = False

    def __init__(self, tokenizer: hf.Tokenizer, special_tokens: dict, *, source: str | None = None):
        if not isinstance(tokenizer, hf.Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        if not isinstance(special_tokens, dict) or set(special_tokens) != set(ROLES):
            raise ValueError(f"special_tokens must map exactly the roles {list(ROLES)}, got {special_tokens!r:.200}")
        for role, token in special_tokens.items():
            if token is not None and (not isinstance(token, str) or not token):
                raise ValueError(f"special_tokens[{role!r}] must be a non-empty string or None, got {token!r}")
        # Padding and truncation in the file are settings for a caller of the library; here
        # encode must return every id of the text (encode_batch pads and truncates itself).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._hf = tokenizer
        self.source = None if source is None else os.fspath(source)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._tokens = {role: special_tokens[role] for role in ROLES}
        self._check_special_tokens(self.source or "a pretrained tokenizer")
        self._ids = {role: tokenizer.token_to_id(token) if token else None for role, token in self._tokens.items()}
        # What decode(skip_special=True) drops besides the library's own special tokens: structure, not [UNK].
        self._control_ids = np.array(sorted({i for role, i in self._ids.items() if i is not None and role != "unk"}))
        library_special = {i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special}
        self.special_ids = tuple(sorted({i for i in self._ids.values() if i is not None} | library_special))

    # --- reading a Hugging Face folder -----------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PretrainedTokenizer:
        """Reads a Hugging Face tokenizer.json (or a folder holding one) and its siblings' special tokens."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        spec = _read_json(path, "tokenizer file")
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json: expected a JSON object with a 'model'")
        tokenizer = _from_spec(spec, path)
        folder = path.parent
        token_configs = [(p, _read_json(p, "tokenizer config")) for p in _existing(folder, "tokenizer_config.json")]
        token_configs += [(p, _read_json(p, "tokenizer config")) for p in _existing(folder, "special_tokens_map.json")]
        model_configs = [(p, _read_json(p, "model config")) for p in _existing(folder, "config.json")]
        special = {role: _resolve_role(role, tokenizer, path, token_configs, model_configs) for role in ROLES}
        return cls(tokenizer, special, source=path)

    # --- the special ids -------------------------------------------------------------------------

    pad_id = _role_id_property("pad")
    unk_id = _role_id_property("unk")
    cls_id = _role_id_property("cls")
    sep_id = _role_id_property("sep")
    mask_id = _role_id_property("mask")
    bos_id = _role_id_property("bos")
    eos_id = _role_id_property("eos")

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The distinct role tokens, in ROLES order."""
        return tuple(dict.fromkeys(token for token in self._tokens.values() if token is not None))

    def _role_id(self, role: str) -> int:
        token_id = self._ids[role]
        if token_id is None and role == "pad":
            token_id = self._ids["eos"]  # see the class docstring; __init__ made sure one exists
        if token_id is None:
            present = ", ".join(f"{r}={t!r}" for r, t in self._tokens.items() if t is not None)
            raise ValueError(f"{role}_id: {self._name()} has no {role} token (its special tokens: {present})")
        return token_id

    def _name(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"the pretrained tokenizer{where} (vocab_size={self.vocab_size})"

    def _check_special_tokens(self, where: str) -> None:
        for role, token in self._tokens.items():
            if token is None:
                continue
            token_id = self._hf.token_to_id(token)
            if token_id is None or not 0 <= token_id < self.vocab_size or self._hf.id_to_token(token_id) != token:
                raise ValueError(f"{where}: the {role} token {token!r} is not in the tokenizer's vocabulary")
        if self._tokens["eos"] is None and self._tokens["pad"] is None:
            raise ValueError(
                f"{where}: a pretrained tokenizer needs an eos or pad token (pad_id falls back to eos_id), "
                "and this one has neither; name one in tokenizer_config.json (eos_token / pad_token)"
            )

    # --- the kind's part of the interface --------------------------------------------------------

    def _encode(self, text: str) -> np.ndarray:
        return np.array(self._hf.encode(text, add_special_tokens=False).ids, np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        return self._hf.decode(ids.tolist(), skip_special_tokens=False)

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """The library's text for the ids; skip_special drops its special tokens and the role tokens but unk."""
        ids = self._checked_ids(ids)
        if skip_special and self._control_ids.size:
            ids = ids[~np.isin(ids, self._control_ids)]
        return self._hf.decode(ids.tolist(), skip_special_tokens=skip_special)

    def id_to_token(self, token_id: int) -> str | None:
        return self._hf.id_to_token(self._check_id(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def _fields(self) -> dict:
        # Replaces the base's fixed special_tokens list: this kind's roles are its own.
        return {"special_tokens": dict(self._tokens), "tokenizer": json.loads(self._hf.to_str())}

    @classmethod
    def _from_fields(cls, fields: dict) -> PretrainedTokenizer:
        special = fields["special_tokens"]
        if not isinstance(special, dict):
            raise TypeError(f"special_tokens must map the roles {list(ROLES)} to tokens, got {special!r:.200}")
        spec = fields["tokenizer"]
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError(f"'tokenizer' must be a Hugging Face tokenizer JSON object, got {spec!r:.200}")
        return cls(_from_spec(spec, "the file's 'tokenizer'"), special)

    @classmethod
    def train(cls, texts, *, vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        raise ValueError(
            "a pretrained tokenizer is loaded from a Hugging Face tokenizer.json "
            "(PretrainedTokenizer.from_file(path) or load_tokenizer(path)), not trained"
        )

    @classmethod
    def _train(cls, corpus, vocab_size, min_frequency) -> Tokenizer:
        return cls.train(corpus, vocab_size=vocab_size, min_frequency=min_frequency)

    # --- for an exporter -------------------------------------------------------------------------

    def hf_json(self) -> str:
        """The wrapped tokenizer as the library's JSON: the tokenizer.json to write (padding, truncation off)."""
        return self._hf.to_str()

    def hf_special_tokens(self) -> dict[str, str]:
        """{role: token} for the roles this tokenizer has (no "pad" when pad_id is only eos_id's stand-in)."""
        return {role: token for role, token in self._tokens.items() if token is not None}

    def __repr__(self) -> str:
        where = f", source={self.source!r}" if self.source else ""
        return f"PretrainedTokenizer(vocab_size={self.vocab_size}{where})"


def _existing(folder: Path, name: str) -> list[Path]:
    return [folder / name] if (folder / name).is_file() else []


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e


def _from_spec(spec: dict, where) -> hf.Tokenizer:
    try:
        return subword_from_spec(spec)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _resolve_role(role: str, tokenizer: hf.Tokenizer, path: Path, token_configs, model_configs) -> str | None:
    """The token string that plays `role`, from the first source that names it (module docstring)."""
    key = f"{role}_token"
    for config_path, config in token_configs:
        if not isinstance(config, dict) or key not in config:
            continue
        value = config[key]
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"{config_path}: {key} must be a token string, {{'content': ...}} or null, got {value!r}")
        if tokenizer.token_to_id(value) is None:
            raise ValueError(f"{config_path}: {key} {value!r} (the {role} token) is not in the vocabulary of {path}")
        return value
    key = f"{role}_token_id"
    for config_path, config in model_configs:
        if not isinstance(config, dict) or config.get(key) is None:
            continue
        value = config[key]
        if isinstance(value, list):
            if not value:
                continue
            value = value[0]
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        token = tokenizer.id_to_token(value) if isinstance(value, int) and not isinstance(value, bool) else None
        if token is None or not 0 <= value < size:
            raise ValueError(f"{config_path}: {key}={config[key]!r} (the {role} token) is not an id of {path}")
        return token
    special = {added.content for added in tokenizer.get_added_tokens_decoder().values() if added.special}
    return next((name for name in _NAMES[role] if name in special), None)
