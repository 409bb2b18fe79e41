"""Subword tokenizers trained by Hugging Face `tokenizers`: byte-level BPE, WordPiece, Unigram.

The library does the training and the encoding; this file builds each pipeline, puts
the shared special tokens at ids 0..6, and fixes two things the library leaves open:

- Literal text: the trainer registers the specials as "added tokens", which the library
  matches inside raw text, so a document containing "[PAD]" would encode to id 0 (and the
  packer would take it for padding). The added tokens are dropped after training: the
  specials stay in the vocabulary at ids 0..6, but only code puts them into a sequence.
  Every pre-tokenizer below splits "[" from the letters after it, so no piece of text can
  match a special's name either.
- Determinism: the WordPiece and Unigram trainers walk hash maps whose order changes from
  run to run; see `WordPieceTokenizer._trainer` and `_canonical_unigram_vocab` for the fixes.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from research.tokenizers.base import NUM_SPECIAL, SPECIAL_TOKENS, Tokenizer


class _HuggingFaceTokenizer(Tokenizer):
    """The shared part: a `tokenizers.Tokenizer` whose model vocabulary starts with SPECIAL_TOKENS."""

    model_type: ClassVar[str]  # the model's "type" in the library's JSON: BPE, WordPiece, Unigram

    def __init__(self, tokenizer: hf.Tokenizer):
        self._hf = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, text: str) -> np.ndarray:
        return np.array(self._hf.encode(text, add_special_tokens=False).ids, np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        # The specials are plain vocabulary entries here, so the decoder writes them as their names.
        return self._hf.decode(ids.tolist(), skip_special_tokens=False)

    def id_to_token(self, token_id: int) -> str:
        return self._hf.id_to_token(self._check_id(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def _fields(self) -> dict:
        return {"tokenizer": json.loads(self._hf.to_str())}

    def hf_json(self) -> str:
        """The library's JSON: a tokenizer.json for Hugging Face (research.export)."""
        return self._hf.to_str()

    def hf_special_tokens(self) -> dict[str, str]:
        """{role: token} as tokenizer_config.json names them: our fixed specials."""
        return dict(zip(("pad", "unk", "cls", "sep", "mask", "bos", "eos"), SPECIAL_TOKENS, strict=True))

    @classmethod
    def _from_fields(cls, fields: dict) -> _HuggingFaceTokenizer:
        spec = fields["tokenizer"]
        model = spec.get("model") if isinstance(spec, dict) else None
        found = model.get("type") if isinstance(model, dict) else None
        if found != cls.model_type:
            raise ValueError(f"a {cls.type_name} file must hold a {cls.model_type} model, found {found!r}")
        if spec.get("added_tokens"):
            raise ValueError("added_tokens must be empty: the library would match them inside raw text")
        return cls(_from_spec(spec))

    @classmethod
    def _pipeline(cls) -> hf.Tokenizer:
        """An untrained tokenizer: model, normalizer, pre-tokenizer, decoder."""
        raise NotImplementedError

    @classmethod
    def _trainer(cls, corpus: list[str], vocab_size: int, min_frequency: int, tokenizer: hf.Tokenizer):
        raise NotImplementedError

    @classmethod
    def _canonicalize(cls, spec: dict) -> None:
        """Makes a freshly trained tokenizer's JSON independent of the trainer's hash-map order."""

    @classmethod
    def _train(cls, corpus: list[str], vocab_size: int, min_frequency: int) -> _HuggingFaceTokenizer:
        tokenizer = cls._pipeline()
        trainer = cls._trainer(corpus, vocab_size, min_frequency, tokenizer)
        tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
        spec = json.loads(tokenizer.to_str())
        spec["added_tokens"] = []  # see the module docstring: specials must not match raw text
        cls._canonicalize(spec)
        return cls(_from_spec(spec))


def _from_spec(spec: dict) -> hf.Tokenizer:
    try:
        return hf.Tokenizer.from_str(json.dumps(spec))
    except Exception as e:  # the library raises a bare Exception for a malformed spec
        raise ValueError(f"the library cannot build a tokenizer from it: {e}") from e


class BPETokenizer(_HuggingFaceTokenizer):
    """Byte-level BPE (GPT-2 style): merges learned over UTF-8 bytes.

    The 256 bytes (as GPT-2's printable stand-in characters) take ids 7..262 and the
    merges follow, so every text encodes without [UNK] and decode(encode(x)) == x for any
    text. No normalizer: nothing is lost before the bytes.
    """

    type_name = "bpe"
    model_type = "BPE"
    min_vocab_size = NUM_SPECIAL + 256
    vocab_floor = "7 special tokens + the 256-byte alphabet"

    def __init__(self, tokenizer: hf.Tokenizer):
        super().__init__(tokenizer)
        missing = [c for c in pre_tokenizers.ByteLevel.alphabet() if tokenizer.token_to_id(c) is None]
        if missing:  # a byte without a token would silently vanish from the text
            raise ValueError(f"a byte-level BPE vocabulary must hold all 256 bytes; missing {len(missing)}")

    @classmethod
    def _pipeline(cls) -> hf.Tokenizer:
        tokenizer = hf.Tokenizer(models.BPE())  # no unk_token: every byte has a token
        # GPT-2's split: letters, digits and punctuation runs apart, a space joins the word after it.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer

    @classmethod
    def _trainer(cls, corpus, vocab_size, min_frequency, tokenizer):
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )


class WordPieceTokenizer(_HuggingFaceTokenizer):
    """BERT's WordPiece: words split on whitespace and punctuation, then greedily into
    the longest known pieces; a piece that continues a word is written "##piece".

    Cased (no lowercasing, accents kept); CJK characters are words of their own. A word
    that cannot be assembled from known pieces (an unseen character) becomes [UNK].
    Decoding joins words with spaces and glues "##" pieces on: lossy around punctuation.
    """

    type_name = "wordpiece"
    model_type = "WordPiece"
    min_vocab_size = NUM_SPECIAL + 1
    vocab_floor = "7 special tokens + 1 piece"

    @classmethod
    def _pipeline(cls) -> hf.Tokenizer:
        tokenizer = hf.Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS[1], continuing_subword_prefix="##"))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        return tokenizer

    @classmethod
    def _trainer(cls, corpus, vocab_size, min_frequency, tokenizer):
        # The trainer gives each "##c" (a character inside a word) the next free id in the
        # order it meets them while walking a hash map of words, and breaks ties between
        # equally frequent merges by id, so the vocabulary itself changes from run to run.
        # Listing every "##c" up front, sorted, fixes their ids and hence the merges.
        continuations = set()
        for text in corpus:
            for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)):
                continuations.update(word[1:])
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS) + ["##" + c for c in sorted(continuations)],
            continuing_subword_prefix="##",
            show_progress=False,
        )


class UnigramTokenizer(_HuggingFaceTokenizer):
    """SentencePiece's Unigram LM: the pieces and log-probabilities that best explain the
    corpus; encoding picks the most probable segmentation (Viterbi).

    Spaces become "▁" and stick to the word after them (Metaspace), so decoding restores
    them. "[" is always a piece of its own (the guard against matching specials, see the
    module docstring). No byte fallback: a character never seen in training is [UNK].
    min_frequency does not apply (the Unigram trainer has no such setting).
    """

    type_name = "unigram"
    model_type = "Unigram"
    min_vocab_size = NUM_SPECIAL + 1
    vocab_floor = "7 special tokens + 1 piece"

    @classmethod
    def _pipeline(cls) -> hf.Tokenizer:
        tokenizer = hf.Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Split("[", behavior="isolated")]
        )
        tokenizer.decoder = decoders.Metaspace()
        return tokenizer

    @classmethod
    def _trainer(cls, corpus, vocab_size, min_frequency, tokenizer):
        return trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token=SPECIAL_TOKENS[1], show_progress=False
        )

    @classmethod
    def _canonicalize(cls, spec: dict) -> None:
        spec["model"]["vocab"] = _canonical_unigram_vocab(spec["model"]["vocab"])


# Scores are kept in steps of 1e-4 (a log-probability needs no more): far above the ~1e-10
# of float noise between runs, and exactly the step between the trainer's filler scores.
_SCORE_STEPS_PER_UNIT = 10_000


def _canonical_unigram_vocab(vocab: list) -> list:
    """The trained [piece, score] list without the trainer's run-to-run differences.

    Scores carry ~1e-10 of float noise (sums over hash maps), and characters that were
    pruned but must stay in the vocabulary come back with filler scores lowest, lowest +
    1e-4, lowest + 2e-4, ... handed out in hash-set order; which rare characters are
    pruned and which keep a near-lowest score of their own also follows the noise. So:
    scores are rounded to 1e-4 steps; the single characters on consecutive steps up from
    the lowest one (fillers and their near-ties) share out those steps in sorted order;
    and pieces are sorted by (score, piece), so equal scores get ids in a fixed order.
    """
    specials, pieces = vocab[:NUM_SPECIAL], vocab[NUM_SPECIAL:]
    step_of = {piece: round(score * _SCORE_STEPS_PER_UNIT) for piece, score in pieces}
    chars_on_step: dict[int, list[str]] = {}
    for piece, step in step_of.items():
        if len(piece) == 1:
            chars_on_step.setdefault(step, []).append(piece)
    band, step = [], min(chars_on_step, default=0)
    while step in chars_on_step:
        band += chars_on_step[step]
        step += 1
    step_of.update(zip(sorted(band), sorted(step_of[piece] for piece in band), strict=True))
    ordered = sorted(step_of.items(), key=lambda entry: (-entry[1], entry[0]))
    return [list(entry) for entry in specials] + [[piece, step / _SCORE_STEPS_PER_UNIT] for piece, step in ordered]
