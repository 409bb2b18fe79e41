"""Instruction data: correct answers, disjoint splits, prompt-masked template, whole-example packing."""

import ast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import instructions as ins
from research.data import python_skills
from research.models import DecoderLM, ModelConfig
from research.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def _solve(example):
    """An independent solver per kind (the code kind: the completed line must be a stdlib line)."""
    body = example.prompt.split(": ", 1)[-1]
    if example.kind == "arithmetic":
        a, op, b = example.prompt.removeprefix("What is ").removesuffix("?").split()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if example.kind == "reverse":
        return "".join(reversed(body))
    if example.kind == "uppercase":
        return body.upper()
    if example.kind == "sort":
        return " ".join(sorted(body.split(), key=int))
    assert body + example.response in ins.code_lines()
    return example.response


def test_examples_are_correct_deterministic_and_splits_disjoint():
    prompts = {}
    for split in ("train", "eval"):
        examples = [ins.make_example(i, split=split, seed=3) for i in range(150)]
        assert [e.kind for e in examples[:5]] == list(ins.KINDS)  # round-robin over kinds
        for e in examples:
            assert e.response == _solve(e), e
            assert ins.split_of(e.prompt) == split
        assert examples == [ins.make_example(i, split=split, seed=3) for i in range(150)]
        prompts[split] = {e.prompt for e in examples}
    assert not prompts["train"] & prompts["eval"]
    assert ins.make_example(0, split="train", seed=4) != ins.make_example(0, split="train", seed=3)
    with pytest.raises(ValueError, match=r"sft.tasks='sort,poetry' holds unknown kinds \['poetry'\]"):
        ins.check_kinds(["sort", "poetry"])


def test_python_skills_answer_what_the_interpreter_would():
    """py_* kinds: the prompt's literal, put through the named operation by Python itself, prints the response."""
    ops = {"py_reverse": ("[::-1]", lambda w: w[::-1]), "py_uppercase": (".upper()", str.upper),
           "py_sort": ("", sorted)}  # fmt: skip
    for split in ("train", "eval"):
        examples = [ins.make_example(i, split=split, seed=5, kinds=python_skills.SKILLS) for i in range(90)]
        assert [e.kind for e in examples[:3]] == list(python_skills.SKILLS)
        for e in examples:
            suffix, op = ops[e.kind]
            expression = e.prompt.removeprefix(">>> ").removesuffix(suffix)
            if e.kind == "py_sort":
                expression = expression.removeprefix("sorted(").removesuffix(")")
            assert repr(op(ast.literal_eval(expression))) == e.response, e
            assert ins.exact_match(e, e.response + "\n") and not ins.exact_match(e, e.response.strip("'[]"))
    with pytest.raises(ValueError, match=r"sft.tasks: 'py_sort:n=3': py_sort has no knobs"):
        ins.check_kinds(["sort", "py_sort:n=3"])


def test_template_masks_the_prompt():
    example = ins.Example("reverse", "Reverse: abc", "cba")
    r = ins.render(TOK, example)
    head = ins.prompt_tokens(TOK, example.prompt)
    assert head[0] == TOK.bos_id and head[-1] == TOK.sep_id
    np.testing.assert_array_equal(r["tokens"][: len(head)], head)
    assert not r["loss_mask"][: len(head)].any()  # [BOS] prompt [SEP]: never a target
    assert TOK.decode(r["tokens"][r["loss_mask"] == 1], skip_special=False) == "cba[EOS]"


def test_segments_keep_untrained_parts_out_of_the_loss():
    example = ins.Example(
        "t", "Q", "Act[x]\nObs: 42\nDone", segments=(("Act[x]\n", True), ("Obs: 42\n", False), ("Done", True))
    )
    r = ins.render(TOK, example)
    assert TOK.decode(r["tokens"][r["loss_mask"] == 1], skip_special=False) == "Act[x]\nDone[EOS]"
    assert TOK.decode(r["tokens"], skip_special=False) == "[BOS]Q[SEP]Act[x]\nObs: 42\nDone[EOS]"
    with pytest.raises(ValueError, match="do not join to its response"):
        ins.Example("t", "Q", "Done", segments=(("Dome", True),))


@pytest.fixture
def echo_kind():
    """A registered kind "echo:n=K": repeat a word K times; verified case-insensitively."""

    def make(kind, rng):
        (n,) = ins.reasoning.parse_knobs(kind, {"n": (2, 1, 5)})[0].values()
        word = ins.random_word(rng)
        return ins.Example(kind, f"Echo {n}: {word}", " ".join([word] * n))

    def check(kind):
        ins.reasoning.parse_knobs(kind, {"n": (2, 1, 5)})

    ins.register_kind("echo", make, check=check, verify=lambda e, out: out.strip().lower() == e.response)
    yield
    del ins._REGISTERED["echo"]


def test_registered_kinds(echo_kind):
    e = ins.make_example(0, split="train", seed=0, kinds=("echo:n=3",))
    assert e.kind == "echo:n=3" and len(e.response.split()) == 3
    assert ins.exact_match(e, e.response.upper())  # the kind's own verifier
    assert ins.check_kinds(["echo", "sort"]) == ("echo", "sort")
    with pytest.raises(ValueError, match=r"sft.tasks: 'echo:n=9': n='9' must be an integer in \[1, 5\]"):
        ins.check_kinds(["echo:n=9"])
    with pytest.raises(ValueError, match="already defined"):
        ins.register_kind("sort", lambda kind, rng: None)


def _spec(**kw):
    args = dict(
        kinds=("arithmetic", "reverse", "sort"), num_train_examples=500, seq_len=64, global_batch_size=4, num_shards=1
    )
    args.update(kw)
    return ins.InstructionSpec(seed=0, **args)


def _segments(row):
    for s in range(1, row["segment_ids"].max() + 1):
        yield {k: v[row["segment_ids"] == s] for k, v in row.items()}


def test_packing_keeps_examples_whole_and_resumes():
    it = ins.make_train_iterator(_spec(), TOK, process_index=0, process_count=1)
    batches = [next(it) for _ in range(2)]
    state = it.get_state()
    later = [next(it) for _ in range(2)]
    assert max(b["segment_ids"].max() for b in batches) >= 2  # short examples do get packed together
    for batch in batches + later:
        for i in range(len(batch["tokens"])):
            row = {k: v[i] for k, v in batch.items()}
            used = row["segment_ids"] > 0
            assert used[: used.sum()].all() and not row["tokens"][~used].any()  # padding only at the end
            for seg in _segments(row):
                assert seg["tokens"][0] == TOK.bos_id and seg["tokens"][-1] == TOK.eos_id  # whole example
                np.testing.assert_array_equal(seg["positions"], np.arange(len(seg["tokens"])))
                start = list(seg["tokens"]).index(TOK.sep_id) + 1
                np.testing.assert_array_equal(seg["loss_mask"], np.arange(len(seg["tokens"])) >= start)
    resumed = ins.make_train_iterator(_spec(), TOK, process_index=0, process_count=1)
    resumed.set_state(state)
    for want in later:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match=r"more than data.seq_len=12"):
        next(ins.make_train_iterator(_spec(seq_len=12), TOK, process_index=0, process_count=1))


def test_packed_examples_never_attend_to_each_other():
    """A packed row's logits, segment by segment, equal each example's logits alone."""
    config = ModelConfig(vocab_size=TOK.vocab_size, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, max_len=64)
    model = DecoderLM(config)
    row = {k: v[:1] for k, v in next(ins.make_train_iterator(_spec(), TOK, process_index=0, process_count=1)).items()}
    params = model.init(jax.random.key(0), jnp.asarray(row["tokens"]))["params"]
    apply = jax.jit(model.apply)
    packed = apply(
        {"params": params},
        jnp.asarray(row["tokens"]),
        positions=jnp.asarray(row["positions"]),
        segment_ids=jnp.asarray(row["segment_ids"]),
    )[0]
    segments = list(_segments({k: v[0] for k, v in row.items()}))
    assert len(segments) >= 2
    # Each example alone in its own row, right-padded (causal: the padding never reaches its logits).
    alone = apply(
        {"params": params}, jnp.asarray([np.pad(seg["tokens"], (0, 64 - len(seg["tokens"]))) for seg in segments])
    )
    for s, seg in enumerate(segments, start=1):
        got = np.asarray(packed[row["segment_ids"][0] == s])
        np.testing.assert_allclose(got, np.asarray(alone[s - 1, : len(seg["tokens"])]), atol=1e-5)
