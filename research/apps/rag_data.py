"""RAG data over research.data.entities worlds: the chunked knowledge base, gold chunks, and the "rag" SFT kind.

    kb = KnowledgeBase(make_world(50, seed=7), n_c=12, overlap=3)
    kb.texts                      # the chunks: what a retriever stores
    kb.gold(question)             # ids of the chunks holding the answer (its words whole)
    rag_prompt(question, passages) == retrieval.augment(question.text, passages)

The knowledge base is the world's passages joined into one document and cut
into n_c-word chunks, so a chunk can straddle two entities or hold only part
of one (a small n_c separates "Its flag is red" from the entity's name).

The SFT kind "rag:passages=K:words=N:overlap=O:entities=E" teaches a decoder the
skill, not the facts: every example draws its own world of E entities (fresh
names and values), chunks it, and puts the gold chunk among K - 1 distractors
(the chunks BM25 ranks highest for the question, so they look relevant) at a
uniformly random position; the response is the answer. passages=0 is the
closed-book variant (no context; the answer can only be guessed). Evaluating on
a world of another seed then asks about facts the model never saw.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from research.apps import retrieval
from research.data import instructions, reasoning
from research.data.entities import Question, World, make_world

KNOBS = {
    "passages": (4, 0, 8),  # K passages in the prompt; 0 = closed book
    "words": (12, 1, 64),  # n_c, the chunk size in words
    "overlap": (3, 0, 63),  # words shared by neighbouring chunks (< n_c)
    "entities": (8, 2, 64),  # the size of each example's own world
}


class KnowledgeBase:
    """A world's passages as one document, chunked by n_c words with `overlap` (research.apps.retrieval)."""

    def __init__(self, world: World, n_c: int, overlap: int = 0):
        if not world.entities:
            raise ValueError("the knowledge base is empty: the world has no entities")
        self.world = world
        self.passages = world.passages()
        self.document = " ".join(self.passages)
        self.chunks = retrieval.chunk_words(self.document, n_c, overlap)  # names n_c / overlap when bad
        self.texts = [c.text for c in self.chunks]
        # Word offset of each entity's passage in the document (passages are joined by one space).
        offsets = np.cumsum([0] + [len(p.split()) for p in self.passages])
        self._start = {e.name: int(o) for e, o in zip(world.entities, offsets, strict=False)}

    def answer_span(self, question: Question) -> tuple[int, int]:
        """[start, end) word span of the answer inside its entity's passage, in document words."""
        name = question.entities[0]
        entity = next(e for e in self.world.entities if e.name == name)
        passage_words = [w.strip(".,") for w in self.world.passage(entity).split()]
        answer = question.answer.split()
        # The attribute's own occurrence: the first match after the attribute's cue word ("by", "is", ...).
        for i in range(len(passage_words) - len(answer) + 1):
            if passage_words[i : i + len(answer)] == answer and _cue_before(passage_words, i, question.text):
                return self._start[name] + i, self._start[name] + i + len(answer)
        raise ValueError(f"answer {question.answer!r} not found in the passage of {name}")

    def gold(self, question: Question) -> list[int]:
        """Ids of the chunks that hold the whole answer span (two when an overlap repeats it; none when a
        chunk boundary without overlap cuts it)."""
        start, end = self.answer_span(question)
        return [i for i, c in enumerate(self.chunks) if c.start <= start and end <= c.end]


# The word right before each attribute's value in entities.World.passage: the cue that tells a
# colour's "red" from the same word elsewhere (numbers: "of 345" vs "is 23").
_CUES = {"founder": "by", "colour": "is", "river": "river", "population": "of", "age": "is"}


def _cue_before(passage_words, i, question_text):
    attribute = re.match(r"What is the (\w+) of ", question_text).group(1)
    return i > 0 and passage_words[i - 1] == _CUES[attribute]


def rag_prompt(question: Question, passages: list[str]) -> str:
    """The prompt the decoder is trained and evaluated on: retrieval.augment's."""
    return retrieval.augment(question.text, passages)


def check(kind: str) -> dict:
    values, _ = reasoning.parse_knobs(kind, KNOBS)
    if values["overlap"] >= values["words"]:
        raise ValueError(f"{kind!r}: overlap={values['overlap']} must be < words={values['words']} (n_c)")
    if values["passages"] > _max_chunks(values):
        raise ValueError(
            f"{kind!r}: passages={values['passages']} is more than the {_max_chunks(values)} chunks a world of "
            f"entities={values['entities']} has at words={values['words']}"
        )
    return values


def _max_chunks(values) -> int:
    words = 28 * values["entities"]  # every passage of entities.World is 28 words long
    return len(retrieval.chunk_spans(words, values["words"], values["overlap"]))


@functools.lru_cache(maxsize=64)
def _knobs(kind: str) -> dict:
    return check(kind)


def make(kind: str, rng) -> instructions.Example:
    """One example of the "rag" kind (see the module docstring)."""
    k = _knobs(kind)
    world = make_world(k["entities"], seed=int(rng.integers(2**31)))
    question = world.questions(rng, 1)[0]
    if k["passages"] == 0:
        return instructions.Example(kind, rag_prompt(question, []), question.answer)
    kb = KnowledgeBase(world, k["words"], k["overlap"])
    gold = kb.gold(question) or [kb_best(kb, question)]
    relevant = gold[int(rng.integers(len(gold)))]
    _, ranked = retrieval.BM25(kb.texts).search([question.text], len(kb.texts))
    distractors = [kb.texts[i] for i in ranked[0] if i not in gold][: k["passages"] - 1]
    at = int(rng.integers(len(distractors) + 1))
    passages = [*distractors[:at], kb.texts[relevant], *distractors[at:]]
    return instructions.Example(kind, rag_prompt(question, passages), question.answer)


def kb_best(kb: KnowledgeBase, question: Question) -> int:
    """The chunk holding most of the answer span (when no chunk holds it whole)."""
    start, end = kb.answer_span(question)
    return int(np.argmax([min(end, c.end) - max(start, c.start) for c in kb.chunks]))


@dataclasses.dataclass(frozen=True)
class QueryPassage:
    """A (question, gold chunk) pair for the contrastive encoder."""

    query: str
    passage: str


def query_passage_pairs(world: World, n_c: int, overlap: int, rng, n: int) -> list[QueryPassage]:
    """n pairs from one world with distinct gold chunks, so in-batch negatives are never positives too.

    Stops early when the world has fewer distinct chunks than n.
    """
    kb = KnowledgeBase(world, n_c, overlap)
    pairs, used = [], set()
    for question in world.questions(rng, 8 * n):
        gold = kb.gold(question) or [kb_best(kb, question)]
        chunk = gold[int(rng.integers(len(gold)))]
        if chunk in used:
            continue
        used.add(chunk)
        pairs.append(QueryPassage(question.text, kb.texts[chunk]))
        if len(pairs) == n:
            break
    return pairs


instructions.register_kind("rag", make, check=check)
