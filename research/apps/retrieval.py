"""Retrieval for RAG: chunking, a lexical retriever (BM25), a dense one over research.embeddings, recall@k.

    chunks = chunk_words(document, size=64, overlap=16)       # n_c = 64 words, 16 shared with the next
    lexical = BM25([c.text for c in chunks])
    dense = DenseRetriever(embed, [c.text for c in chunks])   # embed: list[str] -> [n, d] (an encoder)
    scores, ids = lexical.search(["who founded Veltrano?"], k=4)
    prompt = augment(question, [chunks[i].text for i in ids[0]])

Both retrievers answer `search(queries, k) -> (scores [q, k], ids [q, k])`,
best first, so experiments swap them freely. The dense one stores unit vectors
in a research.embeddings Index (exact or LSH; sharded over a mesh if given).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

from research.embeddings.index import Index

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what BM25 counts and what chunk sizes are measured in."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # first word's index in the document
    end: int  # one past the last


def chunk_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of `size` items, each sharing `overlap` with the next, covering 0..length.

    The last span ends at `length` (it may be shorter). ValueError naming n_c or overlap when
    size <= 0 or not 0 <= overlap < size.
    """
    if size <= 0:
        raise ValueError(f"chunk size n_c must be > 0, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be in [0, n_c={size}), got {overlap}")
    spans, start = [], 0
    while True:
        end = min(start + size, length)
        spans.append((start, end))
        if end >= length:
            return spans
        start = end - overlap


def chunk_words(text: str, size: int, overlap: int = 0) -> list[Chunk]:
    """The document as chunks of `size` whitespace-separated words (n_c), `overlap` shared between
    neighbours; the original spacing inside a chunk is kept."""
    pieces = list(re.finditer(r"\S+", text))
    if not pieces:
        return []
    return [
        Chunk(text[pieces[s].start() : pieces[e - 1].end()], s, e) for s, e in chunk_spans(len(pieces), size, overlap)
    ]


def _check_search(num_stored: int, k: int) -> None:
    if num_stored == 0:
        raise ValueError("the knowledge base is empty: add documents before searching")
    if not 1 <= k <= num_stored:
        raise ValueError(f"top_k={k} must be in [1, {num_stored}] (the number of stored chunks)")


class BM25:
    """Okapi BM25 over word tokens (Robertson et al.): the lexical baseline.

    score(q, d) = sum over query words w of idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl))
    with idf(w) = ln(1 + (N - df(w) + 0.5) / (df(w) + 0.5)), which is never negative.
    """

    def __init__(self, documents: list[str], *, k1: float = 1.5, b: float = 0.75):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        self.counts = [collections.Counter(words(d)) for d in documents]
        self.lengths = np.array([sum(c.values()) for c in self.counts], np.float64)
        df = collections.Counter(w for c in self.counts for w in c)
        n = len(documents)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.avgdl = float(self.lengths.mean()) if n else 0.0

    def __len__(self) -> int:
        return len(self.counts)

    def scores(self, query: str) -> np.ndarray:
        """[num documents] BM25 scores of one query."""
        out = np.zeros(len(self.counts))
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avgdl, 1e-9))
        for w in words(query):
            if w not in self.idf:
                continue
            tf = np.array([c.get(w, 0) for c in self.counts], np.float64)
            out += self.idf[w] * tf * (self.k1 + 1) / (tf + norm)
        return out

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_search(len(self), k)
        all_scores = np.stack([self.scores(q) for q in queries])
        ids = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]  # ties: the earlier document first
        return np.take_along_axis(all_scores, ids, axis=1), ids


class DenseRetriever:
    """Chunks embedded by `embed` (list[str] -> [n, d], e.g. a mean-pooled encoder) in an Index.

    Cosine similarity: the Index normalizes vectors. index_options go to research.embeddings.Index
    (method="exact" | "lsh" | "approx", mesh=..., LSH sizes).
    """

    def __init__(self, embed, documents: list[str], *, batch_size: int = 256, **index_options):
        self.embed, self.batch_size = embed, batch_size
        if not documents:
            raise ValueError("the knowledge base is empty: DenseRetriever needs at least one document")
        vectors = self._embed(documents)
        self.index = Index(vectors.shape[1], **index_options)
        self.index.add(vectors)

    def _embed(self, texts: list[str]) -> np.ndarray:
        parts = [np.asarray(self.embed(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts).astype(np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_search(len(self), k)
        return self.index.search(self._embed(queries), k)


def recall_at_k(ids: np.ndarray, relevant) -> float:
    """Fraction of queries with a relevant chunk among their retrieved ids [q, k].

    relevant: one id per query, or one collection of ids per query (any of them counts: with an
    overlap, two chunks can hold the same fact; an empty collection is a miss).
    """
    ids = np.asarray(ids)
    if len(relevant) != len(ids):
        raise ValueError(f"recall_at_k: {len(relevant)} relevant entries for {len(ids)} queries")
    if all(np.ndim(r) == 0 for r in relevant):
        return float(np.mean(np.any(ids == np.asarray(relevant).reshape(-1, 1), axis=1)))
    return float(np.mean([bool(set(map(int, row)) & set(map(int, r))) for row, r in zip(ids, relevant, strict=True)]))


POSITIONS = ("first", "middle", "last")


def place(relevant: str, distractors: list[str], position: str) -> list[str]:
    """The passages in prompt order with the relevant one first, in the middle or last ("lost in the middle")."""
    if position not in POSITIONS:
        raise ValueError(f"position={position!r}; choose one of {POSITIONS}")
    at = {"first": 0, "middle": len(distractors) // 2, "last": len(distractors)}[position]
    return [*distractors[:at], relevant, *distractors[at:]]


def augment(question: str, passages: list[str]) -> str:
    """The RAG prompt: numbered passages, then the question."""
    context = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
    return f"Context:\n{context}\nQuestion: {question}\nAnswer:"
