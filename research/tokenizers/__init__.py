"""Tokenizers: text <-> int32 ids, one interface for seven kinds, saved as one JSON file.

    kind        vocabulary                                   lossless   [UNK]
    byte        263 ids: specials + 256 UTF-8 bytes           yes        never
    char        specials + 256 bytes + frequent characters    yes        never (byte fallback)
    word        specials + frequent words                     no         unseen words
    bpe         byte-level BPE merges (tokenizers library)    yes        never
    wordpiece   BERT WordPiece, "##" continuations            no         unassemblable words
    unigram     SentencePiece Unigram LM, Metaspace           no         unseen characters
    pretrained  Hugging Face tokenizer.json, own special ids  per file   per file

Every kind but pretrained has the shared special tokens at fixed ids ([PAD]=0 [UNK]=1 [CLS]=2
[SEP]=3 [MASK]=4 [BOS]=5 [EOS]=6); every kind has `encode` / `decode` / `encode_batch`,
`id_to_token` / `token_to_id`, and `save`. `load_tokenizer(path)` reads any kind back (and a
Hugging Face tokenizer.json, as pretrained); `train_tokenizer(kind, texts, vocab_size=...)`
learns one of the others (pretrained is only loaded). Training is deterministic:
the same corpus and settings write the same file.
"""

from research.tokenizers.base import SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_tokenizer
from research.tokenizers.byte import ByteTokenizer
from research.tokenizers.char import CharTokenizer
from research.tokenizers.pretrained import PretrainedTokenizer
from research.tokenizers.subword import BPETokenizer, UnigramTokenizer, WordPieceTokenizer
from research.tokenizers.word import WordTokenizer

TOKENIZER_KINDS = ("byte", "char", "word", "bpe", "wordpiece", "unigram")

__all__ = [
    "SPECIAL_TOKENS",
    "TOKENIZER_KINDS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "PretrainedTokenizer",
    "Tokenizer",
    "UnigramTokenizer",
    "WordPieceTokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "train_tokenizer",
]
