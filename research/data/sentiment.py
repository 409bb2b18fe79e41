"""A toy language with a hidden sentiment and an exact gold reward, for preference tuning.

The DPO paper's controlled setting (IMDb) steers a language model's
continuations towards positive sentiment, scored by a classifier that stands in
for the true reward. Here the language and the reward are both known exactly,
so a tuned policy's reward, its KL to the reference and the label noise of its
training pairs are all measured, not estimated:

  * `SentimentLanguage`: a seeded random bigram chain over `num_words` short
    lowercase words (one id each under the word tokenizer). Half the words are
    positive, half negative; nothing in a word's spelling says which. Each word
    has SUCCESSORS likely successors (Dirichlet weights), SAME_SENTIMENT of
    them of its own sentiment, plus a floor of FLOOR spread over every word, so
    every continuation is possible and sentiment persists: a policy that steers
    towards positive successors can reach a reward near 1 while staying on
    likely transitions. The chain is mirror-symmetric (each positive word has a
    negative twin with the same transitions, twins swapped), and documents start
    from its stationary distribution, so the expected reward of sampled text is
    exactly 0 at every length.
  * The gold reward of a text: (#positive - #negative) / #words over its
    whitespace-separated words; words outside the vocabulary (e.g. "[UNK]")
    count as neutral words; an empty text scores 0.
  * Prompts and preference pairs, deterministic from (seed, split, index).
    A prompt belongs to "eval" iff research.data.instructions.split_of puts its
    text there, so train and eval never share a prompt. Each pair is two
    different continuations of one prompt, the "chosen" one drawn by
    Bradley-Terry on their gold rewards and then flipped with probability
    label_noise. Pairs of one seed share their continuations and draws across
    label_noise and bt_scale, so noise levels differ only in the labels.

Joining: prompts and continuations are words joined by single spaces, with no
leading or trailing space; the full text is `join(prompt, continuation)` =
prompt + " " + continuation. Under the word tokenizer (which drops
whitespace), encode(prompt) followed by encode(continuation) is exactly
encode(join(prompt, continuation)); a byte or char tokenizer must encode
" " + continuation. A pair's reward is the gold reward of its continuation
alone (the part a policy controls; both continuations have the same length).

`toy_sentiment` is a TFDS builder over documents of 16-64 words of
SentimentLanguage.default(), splits `train` (20,000) and `validation` (1,000),
from fixed seeds, so a reference model is pretrained with data.name="toy_sentiment".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from research.data.instructions import split_of
from research.data.preferences import PreferencePair

SUCCESSORS = 6  # likely successors of each word
SAME_SENTIMENT = 4  # how many of them share the word's sentiment
FLOOR = 0.05  # probability mass spread uniformly over all words (every continuation possible)
WORD_LENGTHS = (3, 6)  # letters per word, inclusive
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_RESERVED = frozenset({"pad", "unk", "cls", "sep", "mask", "bos", "eos"})  # the specials' names, to avoid confusion
_SPLITS = {"train": 0, "eval": 1}
_PROMPT_STREAM, _PAIR_STREAM = 0, 1  # first entry of the seed keys: prompts and pairs never share a stream

DOC_WORDS = (16, 64)  # words per builder document, inclusive
SPLIT_SIZES = {"train": 20_000, "validation": 1_000}
_DOC_SEEDS = {"train": 0, "validation": 1}


def join(prompt: str, continuation: str) -> str:
    """The full text of a prompt and its continuation: prompt + " " + continuation (just it if prompt is "")."""
    return f"{prompt} {continuation}" if prompt else continuation


@dataclasses.dataclass(frozen=True)
class SentimentLanguage:
    """The bigram chain of the module docstring; equal (num_words, seed) give the same language."""

    num_words: int = 48
    seed: int = 0
    words: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    positive: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)  # bool [num_words]
    transitions: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)  # [from, to], rows sum to 1
    start_probs: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)  # stationary distribution

    def __post_init__(self):
        n = self.num_words
        if n < 2 * SAME_SENTIMENT or n % 2:
            raise ValueError(f"num_words={n} must be even and >= {2 * SAME_SENTIMENT}")
        rng = np.random.default_rng([self.seed, n])
        words = _make_words(rng, n)
        slot_transitions = _mirrored_transitions(rng, n)
        perm = rng.permutation(n)  # slot s is word perm[s]; slots < n/2 are the positive words
        transitions = np.empty((n, n))
        transitions[np.ix_(perm, perm)] = slot_transitions
        positive = np.zeros(n, bool)
        positive[perm[: n // 2]] = True
        fields = dict(words=words, positive=positive, transitions=transitions, start_probs=_stationary(transitions))
        for name, value in fields.items():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(words)})
        object.__setattr__(self, "_sign", {w: (1 if p else -1) for w, p in zip(words, positive, strict=True)})
        object.__setattr__(self, "_cdf", _cdf(transitions))
        object.__setattr__(self, "_start_cdf", _cdf(self.start_probs[None])[0])

    @classmethod
    def default(cls) -> SentimentLanguage:
        """The fixed language the `toy_sentiment` corpus is sampled from (num_words=48, seed=0)."""
        return _default_language()

    def index(self, word: str) -> int:
        if word not in self._index:
            raise ValueError(f"{word!r} is not a word of this language")
        return self._index[word]

    def is_positive(self, word: str) -> bool:
        return bool(self.positive[self.index(word)])

    def text(self, words: Iterable[str]) -> str:
        return " ".join(words)

    # --- Sampling ----------------------------------------------------------------------------------

    def sample_ids(self, rng: np.random.Generator, num_sequences: int, num_words: int, previous=None) -> np.ndarray:
        """int [num_sequences, num_words] word ids from the chain, all sequences in step.

        previous: the word id each sequence continues ([num_sequences]), or None to start
        from the stationary distribution.
        """
        ids = np.empty((num_sequences, num_words), np.int64)
        prev = None if previous is None else np.broadcast_to(np.asarray(previous, np.int64), (num_sequences,))
        for t in range(num_words):
            u = rng.random(num_sequences)[:, None]
            cdf = self._start_cdf[None] if prev is None else self._cdf[prev]
            prev = ids[:, t] = (cdf <= u).sum(axis=1)  # inverse CDF: the first word whose cdf exceeds u
        return ids

    def sample(self, rng: np.random.Generator, num_words: int, prefix: Sequence[str] = ()) -> list[str]:
        """num_words words continuing prefix (its last word; the stationary start if prefix is empty)."""
        previous = self.index(prefix[-1]) if len(prefix) else None
        return [self.words[i] for i in self.sample_ids(rng, 1, num_words, previous)[0]]

    def log_prob(self, words: Sequence[str], prefix: Sequence[str] = ()) -> float:
        """Natural log-probability of words under the chain, given prefix (as sample() draws them)."""
        ids = [self.index(w) for w in words]
        if not ids:
            return 0.0
        first = self.transitions[self.index(prefix[-1]), ids[0]] if len(prefix) else self.start_probs[ids[0]]
        return float(np.log(first) + np.log(self.transitions[ids[:-1], ids[1:]]).sum())

    # --- Reward ------------------------------------------------------------------------------------

    def gold_reward(self, text: str) -> float:
        """(#positive - #negative) / #words over text.split(); unknown words are neutral; "" -> 0."""
        words = text.split()
        return sum(self._sign.get(w, 0) for w in words) / len(words) if words else 0.0

    def gold_rewards(self, texts: Iterable[str]) -> np.ndarray:
        """float64 [len(texts)]: gold_reward of each text."""
        return np.fromiter((self.gold_reward(t) for t in texts), np.float64)

    # --- Prompts -----------------------------------------------------------------------------------

    def prompt(self, split: str, index: int, *, prompt_words: int, seed: int) -> str:
        """Prompt `index` of `split` ("train" or "eval"): prompt_words sampled words, redrawn until split_of agrees."""
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}; choose from {list(_SPLITS)}")
        if prompt_words < 1:
            raise ValueError(f"prompt_words={prompt_words} must be >= 1")
        for attempt in range(1000):
            rng = np.random.default_rng([_PROMPT_STREAM, seed, _SPLITS[split], index, attempt])
            prompt = self.text(self.sample(rng, prompt_words))
            if split_of(prompt) == split:
                return prompt
        raise RuntimeError(f"no {split} prompt after 1000 draws")  # (eval holds 10% of the hash buckets: never)

    def prompts(self, split: str, n: int, *, prompt_words: int, seed: int) -> list[str]:
        """Prompts 0..n-1 of split (a prefix of a longer list: prompts do not depend on n)."""
        return [self.prompt(split, i, prompt_words=prompt_words, seed=seed) for i in range(n)]


@functools.cache
def _default_language() -> SentimentLanguage:
    return SentimentLanguage()


def _make_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    words = []
    while len(words) < n:
        word = "".join(rng.choice(_LETTERS, size=int(rng.integers(WORD_LENGTHS[0], WORD_LENGTHS[1] + 1))))
        if word not in _RESERVED and word not in words:
            words.append(word)
    return tuple(words)


def _mirrored_transitions(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, n] over slots: slots < n/2 positive, slot s + n/2 the twin of s with the mirrored row."""
    half = n // 2
    rows = np.full((n, n), FLOOR / n)
    for s in range(half):
        same = rng.choice(half, SAME_SENTIMENT, replace=False)
        other = half + rng.choice(half, SUCCESSORS - SAME_SENTIMENT, replace=False)
        rows[s, np.concatenate([same, other])] += (1 - FLOOR) * rng.dirichlet(np.ones(SUCCESSORS))
    twin = (np.arange(n) + half) % n
    rows[half:] = rows[:half][:, twin]  # row of twin(s), at column twin(b), is row s at column b
    return rows


def _stationary(transitions: np.ndarray) -> np.ndarray:
    probs = np.full(len(transitions), 1 / len(transitions))
    for _ in range(1000):  # the floor makes the chain mix within a few dozen steps
        probs = probs @ transitions
    return probs / probs.sum()


def _cdf(probs: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = 1.0  # rounding must never leave u above the last entry
    return cdf


# --- Preference pairs ------------------------------------------------------------------------------


def preference_probability(reward_a: float, reward_b: float, bt_scale: float) -> float:
    """Bradley-Terry P(a preferred over b) = sigmoid(bt_scale * (r_a - r_b)); bt_scale=inf: 1, 0 or 1/2."""
    diff = reward_a - reward_b
    if diff == 0:
        return 0.5
    if math.isinf(bt_scale):
        return 1.0 if diff > 0 else 0.0
    return 0.5 * (1.0 + math.tanh(0.5 * bt_scale * diff))  # the sigmoid, without overflow


def preference_pairs(
    lang: SentimentLanguage,
    n: int,
    *,
    split: str,
    prompt_words: int,
    continuation_words: int,
    label_noise: float = 0.0,
    bt_scale: float = float("inf"),
    seed: int = 0,
) -> list[PreferencePair]:
    """Pairs 0..n-1 of split: pair i continues lang.prompts(split, n, ...)[i] (see the module docstring)."""
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise={label_noise} must be in [0, 1]")
    if not bt_scale >= 0.0:  # also rejects nan
        raise ValueError(f"bt_scale={bt_scale} must be >= 0 (inf: the higher reward always wins)")
    if continuation_words < 1:
        raise ValueError(f"continuation_words={continuation_words} must be >= 1")
    prompts = lang.prompts(split, n, prompt_words=prompt_words, seed=seed)
    pairs = []
    for i, prompt in enumerate(prompts):
        rng = np.random.default_rng([_PAIR_STREAM, seed, _SPLITS[split], i])
        a, b = _two_continuations(lang, rng, prompt, continuation_words)
        u_preference, u_noise = rng.random(2)  # drawn whatever the settings: labels differ only where they must
        a_wins = u_preference < preference_probability(lang.gold_reward(a), lang.gold_reward(b), bt_scale)
        if u_noise < label_noise:
            a_wins = not a_wins
        pairs.append(PreferencePair(prompt, a, b) if a_wins else PreferencePair(prompt, b, a))
    return pairs


def _two_continuations(lang: SentimentLanguage, rng, prompt: str, num_words: int) -> tuple[str, str]:
    last = lang.index(prompt.split()[-1])
    for _ in range(1000):
        ids = lang.sample_ids(rng, 2, num_words, previous=last)
        if (ids[0] != ids[1]).any():
            a, b = ([lang.words[j] for j in row] for row in ids)
            return lang.text(a), lang.text(b)
    raise RuntimeError(f"1000 draws of two {num_words}-word continuations of {prompt!r} were all identical")


# --- The TFDS builder ------------------------------------------------------------------------------


def make_documents(split: str) -> list[str]:
    """The `toy_sentiment` documents of split ("train" or "validation"), in order."""
    lang = SentimentLanguage.default()
    rng = np.random.default_rng(_DOC_SEEDS[split])
    size = SPLIT_SIZES[split]
    lengths = rng.integers(DOC_WORDS[0], DOC_WORDS[1] + 1, size=size)
    ids = lang.sample_ids(rng, size, DOC_WORDS[1])
    words = np.array(lang.words)
    return [lang.text(words[row[:length]]) for row, length in zip(ids, lengths, strict=True)]


class ToySentiment(tfds.core.GeneratorBasedBuilder):
    """Documents of the default SentimentLanguage, for pretraining the reference model."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # as in stdlib_corpus: no importlib_resources needed
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        for i, text in enumerate(make_documents(split)):
            yield i, {"text": text}
