"""RAG data (research.apps.rag_data) and the analysis of experiments/rag.py with a reader that reads perfectly."""

import re
import zlib

import numpy as np
import pytest

from research.apps import rag_data, retrieval
from research.data import instructions
from research.data.entities import World, make_world
from research.experiment import load_experiment

WORLD = make_world(12, seed=3)
QUESTIONS = WORLD.questions(np.random.default_rng(0), 40)


@pytest.mark.parametrize("n_c, overlap", [(3, 1), (6, 2), (12, 3), (16, 0), (5, 0)])
def test_gold_chunks_hold_the_answer_whole(n_c, overlap):
    kb = rag_data.KnowledgeBase(WORLD, n_c, overlap)
    assert all(len(retrieval.words(t)) <= n_c for t in kb.texts)
    for q in QUESTIONS:
        start, end = kb.answer_span(q)
        assert " ".join(kb.document.split()[start:end]).rstrip(".") == q.answer
        gold = kb.gold(q)
        assert all(kb.chunks[i].start <= start and end <= kb.chunks[i].end for i in gold)
        assert all(q.answer in kb.texts[i] for i in gold)
        if overlap:  # answers are at most 2 words: an overlap >= 1 always leaves one chunk holding it whole
            assert gold
        if n_c == 16 and overlap == 0:  # one entity's facts per chunk, exactly
            assert gold == [[e.name for e in WORLD.entities].index(q.entities[0])]


def test_bad_knowledge_bases_and_sizes_name_the_field():
    with pytest.raises(ValueError, match="knowledge base is empty"):
        rag_data.KnowledgeBase(World(()), 4, 1)
    with pytest.raises(ValueError, match="n_c must be > 0"):
        rag_data.KnowledgeBase(WORLD, 0)
    with pytest.raises(ValueError, match="overlap must be in"):
        rag_data.KnowledgeBase(WORLD, 4, 4)
    kb = rag_data.KnowledgeBase(WORLD, 12, 3)
    with pytest.raises(ValueError, match=rf"top_k=999 must be in \[1, {len(kb.texts)}\]"):
        retrieval.BM25(kb.texts).search(["x"], 999)
    with pytest.raises(ValueError, match="knowledge base is empty"):
        retrieval.BM25([]).search(["x"], 1)
    with pytest.raises(ValueError, match="knowledge base is empty"):
        retrieval.DenseRetriever(lambda texts: np.ones((len(texts), 4)), [])


@pytest.mark.parametrize(
    "kind, message",
    [
        ("rag:words=4:overlap=4", r"overlap=4 must be < words=4"),
        ("rag:passages=9", r"passages='9' must be an integer in \[0, 8\]"),
        ("rag:passages=8:words=16:overlap=0:entities=2", "passages=8 is more than the 2 chunks"),
        ("rag:n_c=3", "no knob 'n_c'"),
    ],
)
def test_bad_kinds_name_the_knob(kind, message):
    with pytest.raises(ValueError, match=message):
        instructions.check_kinds([kind])


def test_the_kind_puts_the_gold_chunk_among_distractors_anywhere():
    kind = "rag:passages=3:words=6:overlap=2:entities=8"
    where = []
    for i in range(60):
        e = instructions.make_example(i, split="train", seed=1, kinds=(kind,))
        name, attribute = re.search(r"Question: (\w+) (\w+)\?", e.prompt).groups()
        assert e.response.startswith(f"{name} {attribute} ")
        value = e.response[len(name) + len(attribute) + 2 :]
        passages = re.findall(r"^\[\d\] (.*)$", e.prompt, flags=re.M)
        assert len(passages) == 3 and len(set(passages)) == 3
        holding = [j for j, p in enumerate(passages) if f"{value}." in p or p.endswith(value)]
        assert holding  # the gold chunk is there
        where.append(holding[0])
    assert set(where) == {0, 1, 2}  # at every position
    closed = instructions.make_example(0, split="train", seed=1, kinds=("rag:passages=0",))
    assert closed.prompt.startswith("Context:\n\nQuestion: ") and "[1]" not in closed.prompt


def test_recall_at_k_with_several_relevant_chunks():
    ids = np.array([[3, 1], [0, 2], [5, 4]])
    assert retrieval.recall_at_k(ids, [[1, 7], [9], []]) == pytest.approx(1 / 3)
    assert retrieval.recall_at_k(ids, [3, 2, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 relevant entries for 3 queries"):
        retrieval.recall_at_k(ids, [1, 2])


class PerfectReader:
    """Answers from the passages when one holds the whole fact "Name attribute value.", else says nothing."""

    def answer(self, prompts):
        out = []
        for p in prompts:
            name, attribute = re.search(r"Question: (\w+) (\w+)\?", p).groups()
            context = p.split("\nQuestion:")[0]
            fact = re.search(rf"\b{name} {attribute} ([^.\n]+)\.", context)
            out.append(f"{name} {attribute} {fact.group(1)}" if fact else "")
        return out


def hashed_bag_of_words(texts, dim=256):
    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        for w in retrieval.words(t):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out + 1e-3  # never a zero vector


def test_the_experiments_analysis_with_a_perfect_reader():
    experiment, _ = load_experiment("experiments/rag.py")
    result = experiment.evaluate_world(5, 20, 30, PerfectReader(), hashed_bag_of_words)
    assert result["closed_book"]["exact_match"] == 0.0 and 0 < result["chance"]["exact_match"] < 0.2
    for name in ("bm25", "dense"):
        for n_c, _ in experiment.CHUNKINGS:
            recalls = [result[f"{name}/n_c={n_c}/k={k}"]["recall"] for k in range(1, experiment.K_MAX + 1)]
            assert recalls == sorted(recalls)  # more chunks retrieved, never fewer found
            for k in range(1, experiment.K_MAX + 1):
                r = result[f"{name}/n_c={n_c}/k={k}"]
                assert r["exact_match"] <= r["recall"] + 1e-9  # the reader needs the value in a chunk
    # Names are rare words: BM25 finds the entity's facts once chunks hold whole facts.
    assert result[f"bm25/n_c=12/k={experiment.K_MAX}"]["recall"] > 0.8
    # A reader blind to positions answers the same wherever the gold chunk is: the same passages each time.
    positions = {result[f"position={p}"]["exact_match"] for p in retrieval.POSITIONS}
    assert len(positions) == 1 and positions.pop() > 0.5
    summary = experiment.summarize([result, result])
    assert summary["closed_book"]["exact_match"] == [0.0, 0.0]
    assert "| closed book |" in experiment.markdown(summary, 2, 30)
