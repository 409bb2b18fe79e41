"""Invented entities with attributes: facts no model has seen, for RAG and agents.

    world = make_world(num_entities=200, seed=0)
    world.passages()          # one short paragraph per entity: the knowledge base to chunk
    world.questions(rng, 100) # single-hop: "What is the founder of Veltrano?" -> "Ada Quill"
    world.two_step(rng, 100)  # "What is the population of Veltrano plus the population of Morsk?"
                              # with the gold plan [lookup, lookup, calculator, finish]

Names are drawn from syllables, so they are not words of the corpus and a
model cannot know the answers without the knowledge base (closed-book
accuracy is at chance by construction). Numbers are attributes too, so
questions can need a calculation after the lookups.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SYLLABLES = ("ve", "ltra", "no", "mor", "sk", "qui", "ll", "da", "zen", "tor", "ka", "bri", "lo", "fen", "gar", "ush")
FIRST_NAMES = ("Ada", "Bram", "Cleo", "Dov", "Esme", "Finn", "Gala", "Hugo", "Iris", "Jonah", "Kira", "Lev")
COLOURS = ("red", "green", "blue", "amber", "violet", "grey", "white", "black")
TEXT_ATTRIBUTES = ("founder", "colour", "river")
NUMBER_ATTRIBUTES = ("population", "age")


@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    attributes: dict  # attribute -> str (numbers as decimal strings)


@dataclasses.dataclass(frozen=True)
class Question:
    text: str
    answer: str
    entities: tuple[str, ...]  # which entities' passages hold what is needed
    plan: tuple[tuple[str, str], ...]  # gold (tool, argument) steps, ending with ("finish", answer)


def _name(rng, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=syllables)).capitalize()


def make_world(num_entities: int, seed: int = 0) -> World:
    if num_entities < 2:
        raise ValueError(f"num_entities={num_entities} must be >= 2")
    rng = np.random.default_rng(seed)
    names: list[str] = []
    while len(names) < num_entities:
        name = _name(rng, int(rng.integers(2, 4)))
        if name not in names and len(name) >= 4:
            names.append(name)
    entities = []
    for name in names:
        attributes = {
            "founder": f"{rng.choice(FIRST_NAMES)} {_name(rng, 2)}",
            "colour": str(rng.choice(COLOURS)),
            "river": _name(rng, 2),
            "population": str(int(rng.integers(100, 1000))),
            "age": str(int(rng.integers(10, 100))),
        }
        entities.append(Entity(name, attributes))
    return World(tuple(entities))


@dataclasses.dataclass(frozen=True)
class World:
    entities: tuple[Entity, ...]

    def passage(self, entity: Entity) -> str:
        a = entity.attributes
        return (
            f"{entity.name} was founded by {a['founder']}. Its flag is {a['colour']} and the river {a['river']} runs "
            f"through it. {entity.name} has a population of {a['population']} and is {a['age']} years old."
        )

    def passages(self) -> list[str]:
        return [self.passage(e) for e in self.entities]

    def table(self) -> dict[str, str]:
        """'<attribute> of <name>' -> value: the lookup tool's table."""
        return {f"{k} of {e.name}": v for e in self.entities for k, v in e.attributes.items()}

    def questions(self, rng, n: int) -> list[Question]:
        out = []
        for _ in range(n):
            e = self.entities[int(rng.integers(len(self.entities)))]
            attribute = str(rng.choice(TEXT_ATTRIBUTES + NUMBER_ATTRIBUTES))
            value = e.attributes[attribute]
            key = f"{attribute} of {e.name}"
            out.append(Question(f"What is the {key}?", value, (e.name,), (("lookup", key), ("finish", value))))
        return out

    def two_step(self, rng, n: int) -> list[Question]:
        """Questions that need two lookups and a calculation: the sum or difference of two numbers."""
        out = []
        for _ in range(n):
            i, j = rng.choice(len(self.entities), size=2, replace=False)
            a, b = self.entities[int(i)], self.entities[int(j)]
            attribute = str(rng.choice(NUMBER_ATTRIBUTES))
            op, word = ("+", "plus") if rng.random() < 0.5 else ("-", "minus")
            x, y = int(a.attributes[attribute]), int(b.attributes[attribute])
            answer = str(x + y if op == "+" else x - y)
            ka, kb = f"{attribute} of {a.name}", f"{attribute} of {b.name}"
            plan = (("lookup", ka), ("lookup", kb), ("calculator", f"{x} {op} {y}"), ("finish", answer))
            out.append(Question(f"What is the {ka} {word} the {kb}?", answer, (a.name, b.name), plan))
        return out
