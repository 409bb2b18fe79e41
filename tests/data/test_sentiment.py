"""The toy sentiment language: its words, chain and gold reward; prompts, preference pairs, the TFDS builder."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import sentiment
from research.data.instructions import split_of
from research.data.preferences import PreferencePair
from research.data.sentiment import SentimentLanguage, preference_pairs
from research.tokenizers import SPECIAL_TOKENS, WordTokenizer
from research.tokenizers.word import split_words

LANG = SentimentLanguage.default()
PAIRS = dict(split="train", prompt_words=4, continuation_words=16, seed=0)
NUM_PAIRS = 2000


@pytest.fixture(scope="module")
def clean_pairs():
    return preference_pairs(LANG, NUM_PAIRS, **PAIRS)


def _words_by_sentiment(lang):
    return [w for w in lang.words if lang.is_positive(w)], [w for w in lang.words if not lang.is_positive(w)]


def test_the_language_is_fixed_per_seed_and_differs_across_seeds():
    again = SentimentLanguage(num_words=48, seed=0)
    assert again == LANG and again.words == LANG.words
    np.testing.assert_array_equal(again.transitions, LANG.transitions)
    np.testing.assert_array_equal(again.positive, LANG.positive)
    other = SentimentLanguage(num_words=48, seed=1)
    assert other != LANG and set(other.words) != set(LANG.words)
    assert len(SentimentLanguage(num_words=10, seed=0).words) == 10
    with pytest.raises(ValueError, match="num_words=7 must be even"):
        SentimentLanguage(num_words=7)


def test_words_are_distinct_single_words_with_one_id_each_and_half_positive():
    words = LANG.words
    assert len(words) == len(set(words)) == 48
    for w in words:
        assert split_words(w) == [w] and w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 6
        assert w not in SPECIAL_TOKENS and f"[{w.upper()}]" not in SPECIAL_TOKENS
    positive, negative = _words_by_sentiment(LANG)
    assert len(positive) == len(negative) == 24
    rng = np.random.default_rng(0)
    tok = WordTokenizer.train([LANG.text(LANG.sample(rng, 64)) for _ in range(200)], vocab_size=7 + 48)
    ids = tok.encode(LANG.text(words))
    assert len(ids) == 48 and len(set(ids.tolist())) == 48 and (ids >= len(SPECIAL_TOKENS)).all()
    assert [tok.id_to_token(i) for i in ids] == list(words)


def test_the_chain_is_a_mirror_symmetric_sparse_markov_chain():
    t = LANG.transitions
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert (t >= sentiment.FLOOR / 48).all()  # every continuation is possible
    assert ((t > 2 * sentiment.FLOOR / 48).sum(axis=1) <= sentiment.SUCCESSORS).all()  # a few likely successors
    np.testing.assert_allclose(LANG.start_probs @ t, LANG.start_probs, atol=1e-12)  # documents start stationary
    assert LANG.start_probs[LANG.positive].sum() == pytest.approx(0.5)
    # Sentiment persists: a positive word is followed by a positive one more often than not.
    pi_pos = LANG.start_probs[LANG.positive] / LANG.start_probs[LANG.positive].sum()
    assert pi_pos @ t[np.ix_(LANG.positive, LANG.positive)].sum(axis=1) > 0.6


def test_gold_reward_of_hand_written_texts():
    (p1, p2, *_), (n1, *_) = _words_by_sentiment(LANG)
    assert LANG.gold_reward(f"{p1} {p2} {n1}") == pytest.approx(1 / 3)
    assert LANG.gold_reward(f"{p1}  {p1}\n{p2}") == 1.0
    assert LANG.gold_reward(n1) == -1.0
    assert LANG.gold_reward(f"{p1} [UNK] hello!") == pytest.approx(1 / 3)  # unknown words: neutral, still counted
    assert LANG.gold_reward(f"{p1} {n1}") == 0.0
    assert LANG.gold_reward("") == LANG.gold_reward("  \n") == 0.0
    np.testing.assert_allclose(LANG.gold_rewards([p1, n1, "", f"{p1} x"]), [1.0, -1.0, 0.0, 0.5])
    assert LANG.gold_rewards([]).shape == (0,)


def test_sampled_text_scores_near_zero_but_a_positive_policy_scores_far_above():
    rng = np.random.default_rng(1)
    rewards = LANG.gold_rewards([LANG.text(LANG.sample(rng, 16)) for _ in range(2000)])
    assert abs(rewards.mean()) < 4 * rewards.std() / math.sqrt(len(rewards)) + 1e-3
    assert rewards.std() > 0.2  # texts vary: pairs of continuations usually differ in reward
    greedy_rewards, greedy_logp, sampled_logp = [], [], []
    for prompt in LANG.prompts("eval", 50, prompt_words=4, seed=0):
        prev, continuation = LANG.index(prompt.split()[-1]), []
        for _ in range(16):  # always the likeliest positive successor
            prev = int(np.where(LANG.positive, LANG.transitions[prev], -1).argmax())
            continuation.append(LANG.words[prev])
        greedy_rewards.append(LANG.gold_reward(LANG.text(continuation)))
        greedy_logp.append(LANG.log_prob(continuation, prompt.split()))
        sampled_logp.append(LANG.log_prob(LANG.sample(rng, 16, prompt.split()), prompt.split()))
    assert np.mean(greedy_rewards) > 0.9
    # ... on likely transitions, not by spelling out improbable text.
    assert np.mean(greedy_logp) > np.mean(sampled_logp)


def test_sample_follows_the_transition_matrix():
    rng = np.random.default_rng(2)
    ids = np.array([LANG.index(w) for w in LANG.sample(rng, 50_000)])
    counts = np.zeros((48, 48))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    rows = counts.sum(axis=1, keepdims=True)
    se = np.sqrt(LANG.transitions * (1 - LANG.transitions) / rows)
    assert (np.abs(counts / rows - LANG.transitions) < 5 * se + 1e-3).all()
    np.testing.assert_allclose(np.bincount(ids, minlength=48) / len(ids), LANG.start_probs, atol=0.01)
    first = LANG.words[0]
    nexts = [LANG.index(LANG.sample(rng, 1, prefix=["whatever", first])[0]) for _ in range(3000)]
    np.testing.assert_allclose(np.bincount(nexts, minlength=48) / 3000, LANG.transitions[0], atol=0.04)
    assert LANG.sample(np.random.default_rng(5), 8) == LANG.sample(np.random.default_rng(5), 8)


def test_log_prob_is_the_chain_probability():
    a, b, c = LANG.words[:3]
    t, i = LANG.transitions, LANG.index
    assert LANG.log_prob([a, b, c]) == pytest.approx(math.log(LANG.start_probs[0] * t[0, i(b)] * t[i(b), i(c)]))
    assert LANG.log_prob([b], prefix=[c, a]) == pytest.approx(math.log(t[i(a), i(b)]))
    total = sum(math.exp(LANG.log_prob([x, y])) for x in LANG.words for y in LANG.words)
    assert total == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'zzzzzzz' is not a word"):
        LANG.log_prob(["zzzzzzz"])


def test_prompts_are_deterministic_and_train_and_eval_are_disjoint():
    by_split = {s: LANG.prompts(s, 300, prompt_words=3, seed=7) for s in ("train", "eval")}
    for split, prompts in by_split.items():
        assert all(split_of(p) == split and len(p.split()) == 3 for p in prompts)
        assert all(w in LANG.words for p in prompts for w in p.split())
        assert LANG.prompts(split, 20, prompt_words=3, seed=7) == prompts[:20]  # independent of n
        assert len(set(prompts)) > 100  # a sparse chain repeats short prompts, but they vary
    assert not set(by_split["train"]) & set(by_split["eval"])
    assert LANG.prompts("train", 20, prompt_words=3, seed=8) != by_split["train"][:20]
    with pytest.raises(ValueError, match="split='validation'"):
        LANG.prompts("validation", 1, prompt_words=3, seed=0)


def test_pairs_without_noise_prefer_the_higher_reward(clean_pairs):
    assert [p.prompt for p in clean_pairs] == LANG.prompts("train", NUM_PAIRS, prompt_words=4, seed=0)
    for pair in clean_pairs:
        assert pair.chosen != pair.rejected
        assert len(pair.chosen.split()) == len(pair.rejected.split()) == 16
        assert LANG.gold_reward(pair.chosen) >= LANG.gold_reward(pair.rejected)
    assert preference_pairs(LANG, 50, **PAIRS) == clean_pairs[:50]
    assert preference_pairs(LANG, 50, **{**PAIRS, "seed": 1}) != clean_pairs[:50]
    # Joining: the word tokenizer gives the prompt's tokens, then the continuation's.
    tok = WordTokenizer(LANG.words)
    pair = clean_pairs[0]
    full = tok.encode(sentiment.join(pair.prompt, pair.chosen))
    np.testing.assert_array_equal(full, np.concatenate([tok.encode(pair.prompt), tok.encode(pair.chosen)]))
    assert sentiment.join(pair.prompt, pair.chosen) == pair.prompt + " " + pair.chosen


@pytest.mark.parametrize("label_noise", [0.1, 0.3])
def test_label_noise_flips_that_fraction_of_labels(clean_pairs, label_noise):
    noisy = preference_pairs(LANG, NUM_PAIRS, **PAIRS, label_noise=label_noise)
    flipped = np.array([n != c for n, c in zip(noisy, clean_pairs, strict=True)])
    for n, c, f in zip(noisy, clean_pairs, flipped, strict=True):  # same prompts and continuations, some swapped
        assert n == (PreferencePair(c.prompt, c.rejected, c.chosen) if f else c)
    se = math.sqrt(label_noise * (1 - label_noise) / NUM_PAIRS)
    assert abs(flipped.mean() - label_noise) < 4 * se
    # Measured from the rewards alone, over the pairs whose rewards differ.
    chosen = LANG.gold_rewards([p.chosen for p in noisy])
    rejected = LANG.gold_rewards([p.rejected for p in noisy])
    differ = chosen != rejected
    assert abs((chosen < rejected)[differ].mean() - label_noise) < 4 * se * math.sqrt(NUM_PAIRS / differ.sum())


def test_bradley_terry_preference_probability():
    p = sentiment.preference_probability
    assert p(0.5, 0.25, 4.0) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert p(0.25, 0.5, 4.0) == pytest.approx(1 - p(0.5, 0.25, 4.0))
    assert p(1.0, -1.0, 1e6) == 1.0 and p(-1.0, 1.0, 1e6) == 0.0  # no overflow
    assert p(0.1, 0.0, math.inf) == 1.0 and p(0.0, 0.1, math.inf) == 0.0 and p(0.2, 0.2, math.inf) == 0.5
    assert p(1.0, -1.0, 0.0) == 0.5
    coin = preference_pairs(LANG, 400, **PAIRS, bt_scale=0.0)  # a coin flip, whatever the rewards
    chosen, rejected = LANG.gold_rewards([x.chosen for x in coin]), LANG.gold_rewards([x.rejected for x in coin])
    assert 0.35 < (chosen > rejected)[chosen != rejected].mean() < 0.65


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label_noise=1.5), r"label_noise=1.5 must be in \[0, 1\]"),
        (dict(bt_scale=-1.0), "bt_scale=-1.0 must be >= 0"),
        (dict(bt_scale=float("nan")), "bt_scale=nan must be >= 0"),
        (dict(continuation_words=0), "continuation_words=0 must be >= 1"),
        (dict(prompt_words=0), "prompt_words=0 must be >= 1"),
        (dict(split="test"), "split='test'"),
    ],
)
def test_bad_pair_settings_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        preference_pairs(LANG, 3, **{**PAIRS, **kwargs})


def test_builder_generates_documents_of_the_language(tmp_path):
    builder = tfds.builder("toy_sentiment", data_dir=str(tmp_path), file_format="array_record")
    assert isinstance(builder, sentiment.ToySentiment)
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in sentiment.SPLIT_SIZES} == sentiment.SPLIT_SIZES
    vocabulary = set(LANG.words)
    for split in sentiment.SPLIT_SIZES:
        source = builder.as_data_source(split=split)
        texts = [source[i]["text"].decode("utf-8") for i in range(0, len(source), len(source) // 50)]
        for text in texts:
            words = text.split()
            assert 16 <= len(words) <= 64 and set(words) <= vocabulary and text == " ".join(words)
        assert len(set(texts)) == len(texts)
    assert sentiment.make_documents("validation") == sentiment.make_documents("validation")  # fixed seeds
