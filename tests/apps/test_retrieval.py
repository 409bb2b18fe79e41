"""Chunking, BM25 and the dense retriever (research.apps.retrieval)."""

import itertools
import math
import zlib

import numpy as np
import pytest

from research.apps.retrieval import (
    BM25,
    DenseRetriever,
    augment,
    chunk_spans,
    chunk_words,
    place,
    recall_at_k,
    words,
)


@pytest.mark.parametrize("length, size, overlap", [(10, 4, 1), (12, 4, 0), (3, 8, 2), (100, 7, 6), (1, 1, 0)])
def test_chunks_cover_everything_with_the_overlap_asked(length, size, overlap):
    spans = chunk_spans(length, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(e - s == size for s, e in spans[:-1]) and 0 < spans[-1][1] - spans[-1][0] <= size
    assert all(prev_end - start == overlap for (_, prev_end), (start, _) in itertools.pairwise(spans))


def test_chunk_boundaries_on_text():
    chunks = chunk_words("a b  c d e\nf g", size=3, overlap=1)
    assert [c.text for c in chunks] == ["a b  c", "c d e", "e\nf g"]  # the document's own spacing kept
    assert [(c.start, c.end) for c in chunks] == [(0, 3), (2, 5), (4, 7)]
    assert chunk_words("   ", size=3) == []


@pytest.mark.parametrize("size, overlap, field", [(0, 0, "n_c"), (-2, 0, "n_c"), (4, 4, "overlap"), (4, -1, "overlap")])
def test_bad_chunk_sizes_name_the_field(size, overlap, field):
    with pytest.raises(ValueError, match=field):
        chunk_spans(10, size, overlap)


def test_bm25_matches_the_formula_by_hand():
    docs = ["the cat sat", "the dog sat on the cat", "a bird"]
    bm25 = BM25(docs, k1=1.2, b=0.75)
    avgdl = (3 + 6 + 2) / 3

    def term(tf, dl, df):
        idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avgdl))

    expected = [term(1, 3, 2), term(1, 6, 2), 0.0]  # "cat": in docs 0 and 1, once each
    np.testing.assert_allclose(bm25.scores("cat"), expected)
    np.testing.assert_allclose(bm25.scores("dog cat")[1], term(1, 6, 1) + term(1, 6, 2))
    assert words("Who founded Veltrano?") == ["who", "founded", "veltrano"]


def hashed_bag_of_words(texts, dim=64):
    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        for w in words(t):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out


KB = [f"fact {i}: the {c} of item{i} is {c}{i * 7 % 13}" for i, c in enumerate(["colour", "size", "owner"] * 10)]


@pytest.mark.parametrize("make", [lambda: BM25(KB), lambda: DenseRetriever(hashed_bag_of_words, KB)],
                         ids=["bm25", "dense"])  # fmt: skip
def test_a_planted_duplicate_is_retrieved_first(make):
    retriever = make()
    queries = [KB[3], KB[17], KB[28]]
    scores, ids = retriever.search(queries, k=5)
    assert ids.shape == scores.shape == (3, 5)
    assert ids[:, 0].tolist() == [3, 17, 28] and (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall_at_k(ids, [3, 17, 28]) == 1.0 and recall_at_k(ids[:, 1:], [3, 17, 28]) == 0.0
    with pytest.raises(ValueError, match=r"top_k=31 must be in \[1, 30\]"):
        retriever.search(queries, k=31)


def test_an_empty_knowledge_base_is_an_error():
    with pytest.raises(ValueError, match="knowledge base is empty"):
        BM25([]).search(["anything"], k=1)
    with pytest.raises(ValueError, match="knowledge base is empty"):
        DenseRetriever(hashed_bag_of_words, [])


def test_the_relevant_passage_goes_where_asked():
    others = ["d1", "d2", "d3", "d4"]
    assert place("R", others, "first") == ["R", "d1", "d2", "d3", "d4"]
    assert place("R", others, "middle") == ["d1", "d2", "R", "d3", "d4"]
    assert place("R", others, "last") == ["d1", "d2", "d3", "d4", "R"]
    with pytest.raises(ValueError, match="position='top'"):
        place("R", others, "top")
    assert augment("Q?", ["a", "b"]) == "Context:\n[1] a\n[2] b\nQuestion: Q?\nAnswer:"
