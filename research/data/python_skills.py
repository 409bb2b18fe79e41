"""The string skills of research.data.instructions written as Python, for a base that already has them.

  py_reverse     ">>> 'lamp'[::-1]"          -> "'pmal'"
  py_uppercase   ">>> 'river'.upper()"       -> "'RIVER'"
  py_sort        ">>> sorted([7, 2, 9, 4])"  -> "[2, 4, 7, 9]"

Words and digit lists drawn as for the kinds reverse, uppercase and sort, in the interpreter's
syntax instead of the instruction template's words ("Reverse: lamp" -> "pmal"). A model
trained on these knows the operations before it sees an instruction: fine-tuning it on the
instruction kinds then only has to map one format onto a skill it has, the setting in which
the LoRA paper measures low-rank updates as good as full fine-tuning (experiments/lora_rank.py,
scale=small). Registered as sft.tasks kinds; exact match is their verifier.
"""

from __future__ import annotations

from research.data import instructions


def _make(kind: str, rng) -> instructions.Example:
    if kind == "py_sort":
        digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 7)))]
        return instructions.Example(kind, f">>> sorted({digits})", str(sorted(digits)))
    word = instructions.random_word(rng)
    if kind == "py_reverse":
        return instructions.Example(kind, f">>> {word!r}[::-1]", repr(word[::-1]))
    return instructions.Example(kind, f">>> {word!r}.upper()", repr(word.upper()))


SKILLS = ("py_reverse", "py_uppercase", "py_sort")
for _name in SKILLS:
    instructions.register_kind(_name, _make)  # no knobs: check_kinds refuses any
