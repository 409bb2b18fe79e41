"""RAG data over research.data.entities worlds: the chunked knowledge base, gold chunks, and the "rag" SFT kind.

    kb = KnowledgeBase(make_world(50, seed=7), n_c=6, overlap=2)
    kb.texts                      # the chunks: what a retriever stores
    kb.gold(question)             # ids of the chunks holding the answer (its words whole)
    rag_prompt(question, passages) == retrieval.augment(query(question), passages)

The knowledge base is every entity's facts, one short sentence each ("Zenqui
colour white. Zenqui river Nofen. ..."), joined into one document and cut into
n_c-word chunks, so a chunk can hold several facts, straddle two entities, or
hold a value without its entity (at n_c = 3, "white. Zenqui river").

The reader answers in the "key value" form: to "Zenqui colour?" it says
"Zenqui colour white". Echoing the key turns reading into copying what follows
the key's earlier occurrence in the passages (the skill induction heads learn);
the first format tried, entities.World.passage-like sentences and the question
"What is the colour of Zenqui?" answered by the bare value, left a 2 x 128
byte-level decoder at 0.0 exact match after 300 SFT steps (loss still 1.9 nats
per answer byte), too slow to learn for the tiny scale's 10 minutes.

The SFT kind "rag:passages=K:words=N:overlap=O:entities=E" teaches the skill,
not the facts: every example draws its own world of E entities (fresh names
and values), chunks it, and puts the gold chunk among K - 1 distractors (the
chunks BM25 ranks highest for the question, so they look relevant) at a
uniformly random position. passages=0 is the closed-book variant (no context;
the value can only be guessed). Evaluating on a world of another seed then asks
about facts the model never saw.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from research.apps import retrieval
from research.data import instructions, reasoning
from research.data.entities import NUMBER_ATTRIBUTES, TEXT_ATTRIBUTES, Entity, Question, World, make_world

ATTRIBUTES = TEXT_ATTRIBUTES + NUMBER_ATTRIBUTES
CARD_WORDS = 16  # every entity's facts: 5 x (name, attribute, value) + the founder's second word
KNOBS = {
    "passages": (3, 0, 8),  # K passages in the prompt; 0 = closed book
    "words": (6, 1, 64),  # n_c, the chunk size in words
    "overlap": (2, 0, 63),  # words shared by neighbouring chunks (< n_c)
    "entities": (8, 2, 64),  # the size of each example's own world
}


class KnowledgeBase:
    """A world's passages as one document, chunked by n_c words with `overlap` (research.apps.retrieval)."""

    def __init__(self, world: World, n_c: int, overlap: int = 0):
        if not world.entities:
            raise ValueError("the knowledge base is empty: the world has no entities")
        self.world = world
        self.passages = [card(e) for e in world.entities]
        self.document = " ".join(self.passages)
        self.chunks = retrieval.chunk_words(self.document, n_c, overlap)  # names n_c / overlap when bad
        self.texts = [c.text for c in self.chunks]
        # Word offset of each entity's passage in the document (passages are joined by one space).
        offsets = np.cumsum([0] + [len(p.split()) for p in self.passages])
        self._start = {e.name: int(o) for e, o in zip(world.entities, offsets, strict=False)}

    def answer_span(self, question: Question) -> tuple[int, int]:
        """[start, end) word span of the answer (the value in its fact), in document words."""
        name, attribute = question.entities[0], attribute_of(question)
        entity = next(e for e in self.world.entities if e.name == name)
        at = self._start[name]
        for other in ATTRIBUTES:  # the facts before this one
            if other == attribute:
                break
            at += 2 + len(entity.attributes[other].split())
        if entity.attributes[attribute] != question.answer:
            raise ValueError(f"answer {question.answer!r} is not the {attribute} of {name}")
        return at + 2, at + 2 + len(question.answer.split())

    def gold(self, question: Question) -> list[int]:
        """Ids of the chunks that hold the whole answer span (two when an overlap repeats it; none when a
        chunk boundary without overlap cuts it)."""
        start, end = self.answer_span(question)
        return [i for i, c in enumerate(self.chunks) if c.start <= start and end <= c.end]


def card(entity: Entity) -> str:
    """An entity's facts, one sentence each: "Zenqui founder Ada Dada. Zenqui colour white. ..."."""
    return " ".join(f"{entity.name} {k} {entity.attributes[k]}." for k in ATTRIBUTES)


def attribute_of(question: Question) -> str:
    """The attribute a single-hop question of entities.World.questions asks for."""
    return re.match(r"What is the (\w+) of ", question.text).group(1)


def query(question: Question) -> str:
    """The question as the reader and the retrievers get it: "Zenqui colour?"."""
    return f"{question.entities[0]} {attribute_of(question)}?"


def response(question: Question) -> str:
    """What the reader is trained to say: the key, then the value ("Zenqui colour white")."""
    return f"{question.entities[0]} {attribute_of(question)} {question.answer}"


def answer_of(output: str, question: Question) -> str:
    """The value in a reader's output: what follows the echoed key ("" when the key is not echoed)."""
    key = f"{question.entities[0]} {attribute_of(question)} "
    output = output.strip()
    return output[len(key) :].strip() if output.startswith(key) else ""


def rag_prompt(question: Question, passages: list[str]) -> str:
    """The prompt the decoder is trained and evaluated on: retrieval.augment's."""
    return retrieval.augment(query(question), passages)


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
    words = CARD_WORDS * values["entities"]
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
        return instructions.Example(kind, rag_prompt(question, []), response(question))
    kb = KnowledgeBase(world, k["words"], k["overlap"])
    gold = kb.gold(question) or [kb_best(kb, question)]
    relevant = gold[int(rng.integers(len(gold)))]
    _, ranked = retrieval.BM25(kb.texts).search([query(question)], len(kb.texts))
    distractors = [kb.texts[i] for i in ranked[0] if i not in gold][: k["passages"] - 1]
    at = int(rng.integers(len(distractors) + 1))
    passages = [*distractors[:at], kb.texts[relevant], *distractors[at:]]
    return instructions.Example(kind, rag_prompt(question, passages), response(question))


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
        pairs.append(QueryPassage(query(question), kb.texts[chunk]))
        if len(pairs) == n:
            break
    return pairs


instructions.register_kind("rag", make, check=check)
