"""A locally generated instruction-tuning set, its chat template, and packing that keeps examples whole.

Task kinds (every example has one exact answer):
  arithmetic   "What is 47 + 18?"         -> "65"
  reverse      "Reverse: lamp"            -> "pmal"
  uppercase    "Uppercase: river"         -> "RIVER"
  sort         "Sort: 7 2 9 4"            -> "2 4 7 9"
  code         "Complete: for key, value" -> " in items:"   (a line of this interpreter's
               standard library, cut at a word boundary; its true end is the answer)
and research.data.reasoning's kind strings ("chase:hops=6:think=0.2"): problems with a
trace and a verifier, answered in the `<think>` format; and kinds other modules register
(`register_kind`, e.g. the applications' retrieval, judge and agent data), named
"name:knob=value:...", whose responses may keep parts out of the loss (`Example.segments`).

Examples are generated from (seed, split, index) alone, so every process and
every resumed run sees the same ones. An example belongs to the eval split iff
a hash of its prompt falls in the bottom EVAL_PERCENT buckets: the splits never
share a prompt, whatever the seed or the number of examples.

Chat template, one user turn and one assistant turn, with the shared special ids:
    [BOS] prompt [SEP] response [EOS]
The loss covers the tokens the model must produce: the response and [EOS]
(`loss_mask` = 1 on them, 0 on [BOS], the prompt and [SEP]). Generation feeds
`[BOS] prompt [SEP]` and stops at [EOS].

Packed rows ({tokens, segment_ids, positions, loss_mask}: int32 [rows, seq_len]):
whole examples are packed greedily, one segment id each, positions restarting
at 0; an example that does not fit starts the next row (the rest is padding,
segment 0). Attention masks by segment id, so packed examples never see each
other. The train iterator is a checkpointable grain iterator, sharded over
processes like research.data.pipeline's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import re

import grain
import numpy as np

from research.data import reasoning
from research.data.stdlib_corpus import list_python_files, stdlib_root

KINDS = ("arithmetic", "reverse", "uppercase", "sort", "code")
EVAL_PERCENT = 10
EVAL_SEED = 0  # the eval examples do not depend on train.seed: runs with other seeds are compared on the same ones
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_CODE_FILES = 400  # how many stdlib files (sorted by path) the code-completion lines come from


@dataclasses.dataclass(frozen=True)
class Example:
    kind: str
    prompt: str
    response: str
    # ((text, trained), ...) whose texts join to `response`: the parts with trained=False (e.g. a
    # tool's output inside an agent trajectory) are given to the model but left out of the loss.
    # None: the whole response is trained.
    segments: tuple | None = None

    def __post_init__(self):
        if self.segments is not None and "".join(t for t, _ in self.segments) != self.response:
            raise ValueError(f"Example.segments of a {self.kind!r} example do not join to its response")


@dataclasses.dataclass(frozen=True)
class RegisteredKind:
    """A kind another module defines: `make(kind, rng) -> Example`; `check(kind)` raises ValueError on bad
    knobs (None: the kind takes no knobs); `verify(example, output) -> bool` replaces the exact match of the
    response (None: exact match)."""

    make: object
    check: object = None
    verify: object = None


_REGISTERED: dict[str, RegisteredKind] = {}
# Modules that register kinds, imported on first lookup (they import this module: no import cycle).
_KIND_MODULES = (
    "research.data.python_skills", "research.apps.rag_data", "research.apps.agent_data", "research.apps.judge_data",
)  # fmt: skip


def register_kind(name: str, make, *, check=None, verify=None) -> None:
    """Makes "name" and "name:knob=value:..." valid kinds of sft.tasks (see RegisteredKind)."""
    if name in KINDS or name in reasoning.TASKS or name in _REGISTERED:
        raise ValueError(f"instruction kind {name!r} is already defined")
    _REGISTERED[name] = RegisteredKind(make, check, verify)


def _registered(kind: str) -> RegisteredKind | None:
    import importlib

    for module in _KIND_MODULES:
        importlib.import_module(module)
    return _REGISTERED.get(kind.split(":", 1)[0])


def split_of(prompt: str) -> str:
    """'train' or 'eval', from a hash of the prompt alone."""
    bucket = int.from_bytes(hashlib.sha1(prompt.encode("utf-8")).digest()[:8], "big") % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


@functools.lru_cache(maxsize=1)
def code_lines() -> tuple[str, ...]:
    """Distinct ASCII code lines of 16-48 characters (no comments, no strings) from the stdlib."""
    root = stdlib_root()
    lines = set()
    for rel in list_python_files(root)[:_CODE_FILES]:
        for line in (root / rel).read_text("utf-8", errors="replace").splitlines():
            line = line.strip()
            if 16 <= len(line) <= 48 and line.isascii() and not re.search(r"[#\"']", line) and " " in line:
                lines.add(line)
    return tuple(sorted(lines))


def random_word(rng, low=3, high=7) -> str:
    """low..high-1 random lowercase letters (the words of the reverse and uppercase kinds)."""
    return "".join(rng.choice(_LETTERS, size=int(rng.integers(low, high))))


def _candidate(kind: str, rng) -> Example:
    if kind == "arithmetic":
        a, b = (int(x) for x in rng.integers(0, 100, size=2))
        op = "+" if rng.random() < 0.5 else "-"
        return Example(kind, f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b))
    if kind == "reverse":
        w = random_word(rng)
        return Example(kind, f"Reverse: {w}", w[::-1])
    if kind == "uppercase":
        w = random_word(rng)
        return Example(kind, f"Uppercase: {w}", w.upper())
    if kind == "sort":
        digits = [str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 7)))]
        return Example(kind, f"Sort: {' '.join(digits)}", " ".join(sorted(digits)))
    if kind == "code":
        lines = code_lines()
        line = lines[int(rng.integers(len(lines)))]
        # Cut before one of the last words: the answer is 2-12 characters, the prompt keeps the rest.
        cuts = [m.start() for m in re.finditer(r"\s\S", line) if 2 <= len(line) - m.start() <= 12]
        cut = int(cuts[int(rng.integers(len(cuts)))]) if cuts else len(line) - 2
        return Example(kind, f"Complete: {line[:cut]}", line[cut:])
    if reasoning.is_reasoning_kind(kind):
        return Example(kind, *reasoning.candidate(kind, rng))
    if (registered := _registered(kind)) is not None:
        return registered.make(kind, rng)
    raise ValueError(f"unknown instruction task kind {kind!r}; choose from {KINDS}")


def check_kinds(kinds, field: str = "sft.tasks") -> tuple[str, ...]:
    """The kinds, checked: this module's KINDS and research.data.reasoning's kind strings.

    field: the config key they come from, named by the error.
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS and not reasoning.is_reasoning_kind(k) and _registered(k) is None]
    if not kinds or bad:
        raise ValueError(
            f"{field}={','.join(kinds)!r} holds unknown kinds {bad}; choose from {list(KINDS)}, "
            f"a reasoning task {sorted(reasoning.TASKS)} (research/data/reasoning.py) "
            f"or a registered kind {sorted(_REGISTERED)}"
        )
    for kind in kinds:
        try:
            if reasoning.is_reasoning_kind(kind):
                reasoning.parse_kind(kind)  # its knobs, checked
            elif (registered := _registered(kind)) is not None:
                if registered.check is not None:
                    registered.check(kind)
                elif ":" in kind:
                    raise ValueError(f"{kind!r}: {kind.split(':')[0]} has no knobs")
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None
    return kinds


def metric_name(kind: str) -> str:
    """A kind as a metric-name suffix: "chase:hops=6:think=0.2" -> "chase_hops6_think0.2"."""
    return kind.replace(":", "_").replace("=", "")


def make_example(index: int, *, split: str, seed: int, kinds=KINDS) -> Example:
    """Example `index` of `split`: kind kinds[index % len(kinds)], drawn until its prompt hashes into `split`."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}; choose 'train' or 'eval'")
    kinds = check_kinds(kinds)
    kind = kinds[index % len(kinds)]
    for attempt in range(1000):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index, attempt])
        example = _candidate(kind, rng)
        if split_of(example.prompt) == split:
            return example
    raise RuntimeError(f"no {split} prompt for {kind} after 1000 draws")  # (p = 0.9^1000: never)


def exact_match(example: Example, output: str) -> bool:
    """The verifier: the generated text, trailing whitespace aside, is exactly the answer; for a
    reasoning kind, the answer inside a well-formed `<think>` response is right (research.data.reasoning)."""
    if reasoning.is_reasoning_kind(example.kind):
        return reasoning.is_correct(example.kind, example.prompt, example.response, output)
    if (registered := _registered(example.kind)) is not None and registered.verify is not None:
        return registered.verify(example, output)
    return output.rstrip() == example.response.rstrip()


# --- Template --------------------------------------------------------------------------------------


def prompt_tokens(tokenizer, prompt: str) -> np.ndarray:
    """[BOS] prompt [SEP]: what generation is fed. A pretrained tokenizer without a sep token
    (GPT-2, Llama) ends the prompt with a newline's tokens instead."""
    ids = tokenizer.encode(prompt)
    try:
        sep = [tokenizer.sep_id]
    except ValueError:  # research.tokenizers.PretrainedTokenizer: the role is absent
        sep = tokenizer.encode("\n").tolist()
    return np.concatenate([[tokenizer.bos_id], ids, sep]).astype(np.int32)


def render(tokenizer, example: Example) -> dict:
    """{"tokens": [BOS] prompt [SEP] response [EOS], "loss_mask": 1 on response + [EOS]} as int32 arrays.

    With `example.segments`, each segment is encoded on its own and the untrained ones get loss_mask 0.
    """
    head = prompt_tokens(tokenizer, example.prompt)
    parts = [(head, 0)]
    for text, trained in example.segments or ((example.response, True),):
        parts.append((np.asarray(tokenizer.encode(text), np.int32), int(trained)))
    parts.append((np.asarray([tokenizer.eos_id], np.int32), 1))
    tokens = np.concatenate([ids for ids, _ in parts]).astype(np.int32)
    loss_mask = np.concatenate([np.full(len(ids), m, np.int32) for ids, m in parts])
    return {"tokens": tokens, "loss_mask": loss_mask}


# --- Packing ---------------------------------------------------------------------------------------


class PackedExamples(grain.IterDataset):
    """Greedy packing of whole rendered examples into rows of seq_len (see the module docstring)."""

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len

    def __iter__(self) -> grain.DatasetIterator:
        return _PackedExamplesIterator(self._parent.__iter__(), self._seq_len)


class _PackedExamplesIterator(grain.DatasetIterator):
    """State: the parent's state before the example read but not yet placed (or its current state).

    Restoring re-reads that example, so the state is the parent's alone.
    """

    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._pending = None  # an example read from the parent that did not fit the last row
        self._pending_state = None  # the parent's state just before `_pending` was read

    def __next__(self) -> dict:
        n = self._seq_len
        row = {key: np.zeros(n, np.int32) for key in ("tokens", "segment_ids", "positions", "loss_mask")}
        filled = segment = 0
        while True:
            if self._pending is None:
                state = copy.deepcopy(self._parent.get_state())
                try:
                    self._pending = next(self._parent)
                except StopIteration:
                    break
                self._pending_state = state
            length = len(self._pending["tokens"])
            if length > n:
                raise ValueError(
                    f"an instruction example is {length} tokens long, more than data.seq_len={n}; raise data.seq_len"
                )
            if filled + length > n:
                break
            segment += 1
            row["tokens"][filled : filled + length] = self._pending["tokens"]
            row["loss_mask"][filled : filled + length] = self._pending["loss_mask"]
            row["segment_ids"][filled : filled + length] = segment
            row["positions"][filled : filled + length] = np.arange(length)
            filled += length
            self._pending = None
        if filled == 0:
            raise StopIteration
        return row

    def get_state(self) -> dict:
        if self._pending is None:
            return copy.deepcopy(self._parent.get_state())
        return copy.deepcopy(self._pending_state)

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)
        self._pending = self._pending_state = None


@dataclasses.dataclass(frozen=True)
class InstructionSpec:
    """What the pipeline needs from the config (config.sft, data.seq_len, train.batch_size, train.seed)."""

    kinds: tuple[str, ...]
    num_train_examples: int  # distinct training examples; the iterator cycles through them, reshuffled each epoch
    seq_len: int
    global_batch_size: int
    num_shards: int
    seed: int


def _shard_batches(spec: InstructionSpec, tokenizer, shard: int, *, split: str, shuffle: bool, num_examples: int):
    indices = grain.MapDataset.range(num_examples)[shard :: spec.num_shards]
    if shuffle:
        indices = indices.shuffle(seed=int(np.random.SeedSequence([spec.seed, shard]).generate_state(1)[0]))
    kinds, seed = spec.kinds, (spec.seed if split == "train" else EVAL_SEED)
    examples = indices.repeat().map(
        lambda i: render(tokenizer, make_example(int(i), split=split, seed=seed, kinds=kinds))
    )
    examples = examples.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return PackedExamples(examples, spec.seq_len).batch(spec.global_batch_size // spec.num_shards, drop_remainder=True)


def _process_batches(spec, tokenizer, process_index, process_count, **kwargs) -> grain.IterDataset:
    if spec.num_shards < 1 or spec.num_shards % process_count or spec.global_batch_size % spec.num_shards:
        raise ValueError(
            f"data.num_shards={spec.num_shards} must be a multiple of the process count ({process_count}) "
            f"and divide train.batch_size={spec.global_batch_size}"
        )
    per_process = spec.num_shards // process_count
    shards = range(process_index * per_process, (process_index + 1) * per_process)
    datasets = [_shard_batches(spec, tokenizer, shard, **kwargs) for shard in shards]
    return grain.experimental.ZipIterDataset(datasets).map(
        lambda batches: {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    )


def make_train_iterator(spec: InstructionSpec, tokenizer, *, process_index: int, process_count: int):
    """Endless, shuffled, checkpointable iterator over this process's packed training rows."""
    dataset = _process_batches(
        spec, tokenizer, process_index, process_count, split="train", shuffle=True, num_examples=spec.num_train_examples
    )
    return iter(dataset)


def make_eval_batches(
    spec: InstructionSpec, tokenizer, *, num_batches: int, process_index: int, process_count: int, num_examples: int
) -> list[dict]:
    """The first `num_batches` packed batches of eval examples 0..num_examples-1 (cycled if needed)."""
    dataset = _process_batches(
        spec, tokenizer, process_index, process_count, split="eval", shuffle=False, num_examples=num_examples
    )
    iterator = iter(dataset)
    return [next(iterator) for _ in range(num_batches)]


def eval_examples(spec: InstructionSpec, num_examples: int) -> list[Example]:
    """Eval examples 0..num_examples-1, the ones exact match is measured on."""
    return [make_example(i, split="eval", seed=EVAL_SEED, kinds=spec.kinds) for i in range(num_examples)]
