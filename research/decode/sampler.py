"""The sampler: token prompts in, arrays out. Rollouts, Best-of-N, evaluation and agents all call it.

    config = SamplingConfig(max_new_tokens=64, temperature=1.0, num_samples=8, stop_tokens=(eos_id,))
    out = sample(model, params, prompts, config, rng)     # prompts: lists of token ids
    out.tokens          [n, P + T] left-padded prompt, then the response (pad_id after it)
    out.logprobs        [n, P + T] log-probability of each response token under the distribution
                        it was drawn from (0 elsewhere)
    out.response_mask   [n, P + T] the response tokens (up to and including a stop token)
    out.forced_mask     [n, P + T] response tokens a processor forced (not the model's choice)
    out.positions, out.segment_ids: what a full forward pass over `tokens` needs
    rows are prompt-major: row p * num_samples + s is sample s of prompt p.

How it works. Prompts are left-padded to a bucket length P (a power of two,
at most what the context leaves after max_new_tokens), so a run compiles once
per bucket, not once per prompt length; padding has segment id 0 and is never
attended to, and positions are explicit, so the padding changes nothing. One
jit holds the prefill of every prompt, then a copy of each prompt's KV cache
per sample (prefill once, sample n times), then a lax.while_loop of
single-token steps that ends when every row has stopped. Inside the loop:
min_new_tokens forbids the stop tokens; token processors (research/decode/
processors.py) forbid or force tokens; temperature, top-k and top-p filter;
a categorical draw (or argmax at temperature 0) picks the token; stop tokens
and stop sequences end a row. A stopped row feeds padding with segment id 0,
so it writes nothing visible into the cache.

The log-probabilities are those of the sampling distribution: log softmax of
the processed, filtered logits / temperature (greedy: of the processed logits
at temperature 1). At temperature 1 without filters they equal the model's own
log-probabilities of the sampled tokens, which a full forward pass reproduces
(tests/decode/test_sampler.py).

Continuing: `return_state=True` also returns a `DecodeState` (the cache, the
next-token logits, each row's position); `extend(...)` feeds more tokens (a
tool's output) into it and `sample(..., state=...)` samples on from there.
The cache holds `cache_len` slots, fixed when the state is made.

Sharding: with `mesh`, rows are split over the mesh's batch axes (data x fsdp
x expert) and the parameters keep their shardings; the prompt count is padded
to a multiple of that size (the padding rows are dropped from the result).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from research.decode.processors import StepContext, ends_with, forbid
from research.decode.sampling import top_k_filter, top_p_filter
from research.train.sharding import BATCH_AXES, LOGICAL_RULES
from research.train.sources import replicated_rows

MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Hashable: a static argument of the jitted loop."""

    max_new_tokens: int
    min_new_tokens: int = 0  # stop tokens are forbidden before this many new tokens
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    num_samples: int = 1  # samples per prompt
    stop_tokens: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that end a row (stop strings, encoded)
    processors: tuple = ()  # research.decode.processors.TokenProcessor instances, applied in order
    pad_id: int = 0

    def validate(self, field: str = "sampling") -> None:
        checks = (
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens, "in [0, max_new_tokens]"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("num_samples", self.num_samples >= 1, ">= 1"),
        )
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{field}.{name}={getattr(self, name)!r} must be {want}")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError(f"{field}.stop_sequences holds an empty sequence")


@struct.dataclass
class DecodeState:
    """Where sampling stopped: enough to feed more tokens or sample on."""

    cache: dict  # the model's "cache" collection, cache_len slots per row
    logits: jax.Array  # [rows, vocab] next-token logits after the last fed token
    position: jax.Array  # [rows] position of each row's last fed token
    used: int = struct.field(pytree_node=False)  # cache slots filled so far (the same for every row)
    cache_len: int = struct.field(pytree_node=False)


@struct.dataclass
class Samples:
    tokens: jax.Array  # [n, P + T] int32
    positions: jax.Array  # [n, P + T] int32
    segment_ids: jax.Array  # [n, P + T] int32: 1 on prompt and response tokens, 0 on padding
    response_mask: jax.Array  # [n, P + T] bool
    forced_mask: jax.Array  # [n, P + T] bool
    logprobs: jax.Array  # [n, P + T] float32
    lengths: jax.Array  # [n] int32: response tokens
    stopped: jax.Array  # [n] bool: ended by a stop token or sequence (not by max_new_tokens)
    prompt_index: jax.Array  # [n] int32: which prompt the row continues
    prompt_len: int = struct.field(pytree_node=False)  # P, the bucket

    def responses(self) -> list[list[int]]:
        """Each row's response tokens (up to and including its stop token), as host lists."""
        tokens, lengths = np.asarray(self.tokens[:, self.prompt_len :]), np.asarray(self.lengths)
        return [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)]

    def texts(self, tokenizer, *, stop_strings: Sequence[str] = (), skip_ids: Sequence[int] = ()) -> list[str]:
        """Decoded responses without `skip_ids` (e.g. [EOS]), cut before the first of `stop_strings`.

        The cut is exact whatever the tokenizer, where the in-loop stop sequences match only the
        canonical encoding of a string.
        """
        out = []
        for row in self.responses():
            text = tokenizer.decode([t for t in row if t not in skip_ids])
            cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def bucket_length(longest: int, cap: int) -> int:
    """The power of two >= longest (at least MIN_BUCKET), capped at `cap`: the padded prompt length."""
    bucket = MIN_BUCKET
    while bucket < longest:
        bucket *= 2
    return max(min(bucket, cap), longest)


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
    """(tokens, positions, segment_ids) int32 [len(prompts), length]: prompts right-aligned, padding segment 0."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segment_ids = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p) :] = p
            segment_ids[i, length - len(p) :] = 1
            positions[i, length - len(p) :] = np.arange(len(p))
    return tokens, positions, segment_ids


def check_prompts(model, prompts, max_new_tokens: int, *, field: str = "prompts") -> None:
    """Raises before compiling: no prompts, an empty one, ids outside the vocabulary, no room in the context."""
    c = model.config
    if not len(prompts):
        raise ValueError(f"{field}: no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"{field}[{i}] is empty: a prompt needs at least one token (e.g. [BOS])")
        bad = [t for t in p if not 0 <= t < c.vocab_size]
        if bad:
            raise ValueError(f"{field}[{i}] holds token ids {bad[:5]} outside [0, model.vocab_size={c.vocab_size})")
    longest = max(len(p) for p in prompts)
    if longest >= c.max_len:
        raise ValueError(f"a prompt of {longest} tokens leaves no room in the context, model.max_len={c.max_len}")
    if longest + max_new_tokens > c.max_len:
        raise ValueError(
            f"a prompt of {longest} tokens leaves no room for max_new_tokens={max_new_tokens}: "
            f"prompt + new tokens exceed the context, model.max_len={c.max_len}"
        )


def _batch_parallel(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape])) if mesh is not None else 1


def _place(arrays, mesh):
    """Host arrays [rows, ...], the same on every process -> jax arrays with rows over the mesh's batch axes."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, arrays)
    return jax.tree.map(lambda a: replicated_rows(a, mesh), arrays)


def _in_mesh(mesh, fn):
    """fn() inside the mesh and the logical-axis rules, so the model's sharding constraints apply."""
    if mesh is None:
        return fn()
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        return fn()


def sample(
    model,
    params,
    prompts: Sequence[Sequence[int]] | None,
    config: SamplingConfig,
    rng=None,
    *,
    state: DecodeState | None = None,
    cache_len: int | None = None,
    return_state: bool = False,
    mesh=None,
):
    """Samples `config.num_samples` continuations of each prompt (or of `state`'s rows); see the module docstring.

    model: anything with `config` (vocab_size, max_len), `init` and `apply` like DecoderLM
    (research.peft.model.AdaptedModel too); params: its variables' "params".
    cache_len: slots of the cache made for the prompts (default: bucket + max_new_tokens); leave
    room for what `extend` will feed later. Returns Samples, or (Samples, DecodeState).
    """
    config.validate()
    rng = jax.random.key(0) if rng is None else rng
    if state is not None:
        if prompts is not None:
            raise ValueError("give prompts or a state to continue, not both")
        if state.used + config.max_new_tokens > state.cache_len:
            raise ValueError(
                f"the cache has {state.cache_len - state.used} free slots, fewer than "
                f"max_new_tokens={config.max_new_tokens}"
            )
        if config.num_samples != 1:
            raise ValueError("continuing a state samples each of its rows once: num_samples must be 1")
        out, new_state = _in_mesh(mesh, lambda: _continue(params, state, rng, model=model, config=config))
        return (out, new_state) if return_state else out
    check_prompts(model, prompts, config.max_new_tokens)
    longest = max(len(p) for p in prompts)
    bucket = bucket_length(longest, model.config.max_len - config.max_new_tokens)
    cache_len = bucket + config.max_new_tokens if cache_len is None else cache_len
    if cache_len < bucket + config.max_new_tokens:
        raise ValueError(f"cache_len={cache_len} is shorter than the prompt bucket {bucket} + max_new_tokens")
    rows = len(prompts)
    multiple = _batch_parallel(mesh)
    padded = list(prompts) + [[config.pad_id]] * (-rows % multiple)  # dummy rows so the batch axes divide
    arrays = _place(left_pad(padded, bucket, config.pad_id), mesh)
    out, new_state = _in_mesh(
        mesh, lambda: _sample(params, *arrays, rng, model=model, config=config, cache_len=cache_len)
    )
    if len(padded) != rows:
        keep = rows * config.num_samples
        out = jax.tree.map(lambda x: x[:keep], out)
        new_state = jax.tree.map(lambda x: x[:keep] if x.ndim and x.shape[0] == len(padded) * config.num_samples else x,
                                 new_state)  # fmt: skip
    return (out, new_state) if return_state else out


def extend(model, params, state: DecodeState, tokens: Sequence[Sequence[int]], *, mesh=None) -> DecodeState:
    """Feeds each row's `tokens` (a tool's output, a forced reply; may differ in length, may be empty)
    into the cache after what it holds; sample(state=...) then continues after them."""
    rows = state.logits.shape[0]
    if len(tokens) != rows:
        raise ValueError(f"extend: {len(tokens)} token lists for a state of {rows} rows")
    length = max(max((len(t) for t in tokens), default=0), 1)
    if state.used + length > state.cache_len:
        raise ValueError(f"extend: {length} tokens do not fit the {state.cache_len - state.used} free cache slots")
    chunk, offsets, segment_ids = left_pad(tokens, length, 0)
    chunk, offsets, segment_ids = _place((chunk, offsets, segment_ids), mesh)
    return _in_mesh(mesh, lambda: _extend(params, state, chunk, offsets, segment_ids, model=model))


# --- Jitted pieces -------------------------------------------------------------------------------------


def _forward(model, params, cache, tokens, positions, segment_ids):
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        decode=True,
        mutable=["cache"],
    )
    return logits[:, -1].astype(jnp.float32), mutated["cache"]


def init_cache(model, rows: int, cache_len: int):
    """Zeroed KV cache for `cache_len` slots, shaped by an abstract (allocation-free) decode pass."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((rows, cache_len), jnp.int32), decode=True)["cache"]
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _repeat_rows(tree, rows: int, times: int):
    """Each leaf with a leading axis of `rows`, every row repeated `times` times in place (r -> r*times + s)."""
    if times == 1:
        return tree
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0) if x.ndim and x.shape[0] == rows else x, tree)


@functools.partial(jax.jit, static_argnames=("model", "config", "cache_len"))
def _sample(params, tokens, positions, segment_ids, rng, *, model, config, cache_len):
    rows, prompt_len = tokens.shape
    n = config.num_samples
    cache = init_cache(model, rows, cache_len)
    logits, cache = _forward(model, params, cache, tokens, positions, segment_ids)  # prefill, once per prompt
    cache, logits = _repeat_rows(cache, rows, n), _repeat_rows(logits, rows, n)
    tokens, positions, segment_ids = (_repeat_rows(x, rows, n) for x in (tokens, positions, segment_ids))
    forward = functools.partial(_forward, model, params)
    new, final = decode_loop(forward, logits, cache, positions[:, -1], rng, config=config)
    out = _assemble(tokens, positions, segment_ids, new, prompt_index=jnp.arange(rows * n) // n)
    return out, DecodeState(final["cache"], final["logits"], final["position"], prompt_len + config.max_new_tokens,
                            cache_len)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model", "config"))
def _continue(params, state, rng, *, model, config):
    rows = state.logits.shape[0]
    forward = functools.partial(_forward, model, params)
    new, final = decode_loop(forward, state.logits, state.cache, state.position, rng, config=config)
    empty = jnp.zeros((rows, 0), jnp.int32)
    out = _assemble(empty, empty, empty, new, prompt_index=jnp.arange(rows))
    return out, DecodeState(final["cache"], final["logits"], final["position"], state.used + config.max_new_tokens,
                            state.cache_len)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model",))
def _extend(params, state, chunk, offsets, segment_ids, *, model):
    positions = state.position[:, None] + 1 + offsets  # [rows, len]: continue each row's own positions
    has = segment_ids.sum(axis=1) > 0
    logits, cache = _forward(model, params, state.cache, chunk, positions, segment_ids)
    # A row given no tokens keeps its logits and position (its chunk is all padding).
    logits = jnp.where(has[:, None], logits, state.logits)
    position = jnp.where(has, positions[:, -1], state.position)
    return DecodeState(cache, logits, position, state.used + chunk.shape[1], state.cache_len)


def _assemble(tokens, positions, segment_ids, new, *, prompt_index) -> Samples:
    """Prompt arrays [n, P] + the loop's [n, T] outputs -> Samples over [n, P + T], rows on the batch axes."""
    valid = new["valid"]
    prompt_mask = jnp.zeros(tokens.shape, bool)
    out = Samples(
        tokens=jnp.concatenate([tokens, new["tokens"]], axis=1),
        positions=jnp.concatenate([positions, jnp.where(valid, new["positions"], 0)], axis=1),
        segment_ids=jnp.concatenate([segment_ids, valid.astype(jnp.int32)], axis=1),
        response_mask=jnp.concatenate([prompt_mask, valid], axis=1),
        forced_mask=jnp.concatenate([prompt_mask, new["forced"] & valid], axis=1),
        logprobs=jnp.concatenate([jnp.zeros(tokens.shape, jnp.float32), jnp.where(valid, new["logprobs"], 0.0)], 1),
        lengths=valid.sum(axis=1).astype(jnp.int32),
        stopped=new["stopped"],
        prompt_index=prompt_index.astype(jnp.int32),
        prompt_len=tokens.shape[1],
    )
    # Under a mesh's logical rules (see _in_mesh), rows stay split like a training batch; else a no-op.
    return jax.tree.map(lambda x: nn.with_logical_constraint(x, ("activation_batch",) + (None,) * (x.ndim - 1)), out)


def choose(rng, logits, config: SamplingConfig):
    """(token [rows], log-probability [rows]) from processed logits: greedy or a filtered categorical draw."""
    if config.temperature == 0.0:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        filtered = top_p_filter(top_k_filter(logits / config.temperature, config.top_k), config.top_p)
        token = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(filtered, axis=-1)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _squeeze(tree):
    """Each leaf without its unit axes: how the loop carries the cache (see decode_loop)."""
    return jax.tree.map(lambda x: x.reshape([d for d in x.shape if d != 1]), tree)


def _unsqueeze(tree, like):
    """`tree`'s leaves reshaped to those of `like` (a pytree of the same structure)."""
    return jax.tree.map(lambda x, y: x.reshape(y.shape), tree, like)


def decode_loop(forward, logits, cache, position, rng, *, config: SamplingConfig):
    """The token-by-token loop after a prefill; shared by decoder-only and encoder-decoder models.

    forward(cache, tokens [rows, 1], positions [rows, 1], segment_ids [rows, 1]) -> (logits [rows, vocab], cache);
    logits: the next-token logits after the prefill; position [rows]: each row's last position.
    Returns ({tokens, positions, logprobs, valid, forced: [rows, T], stopped: [rows]}, final loop state).
    """
    rows, steps = logits.shape[0], config.max_new_tokens
    stop = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)
    processors = config.processors
    init = dict(
        step=jnp.zeros((), jnp.int32),
        logits=logits.astype(jnp.float32),
        cache=_squeeze(cache),
        position=position,
        done=jnp.zeros((rows,), bool),
        stopped=jnp.zeros((rows,), bool),
        tokens=jnp.full((rows, steps), config.pad_id, jnp.int32),
        positions=jnp.zeros((rows, steps), jnp.int32),
        logprobs=jnp.zeros((rows, steps), jnp.float32),
        valid=jnp.zeros((rows, steps), bool),
        forced=jnp.zeros((rows, steps), bool),
        processor_states=tuple(p.init_state(rows) for p in processors),
    )

    def cond(s):
        return (s["step"] < steps) & ~jnp.all(s["done"])

    def body(s):
        i, done = s["step"], s["done"]
        ctx = StepContext(step=i, generated=s["tokens"], done=done)
        logits = s["logits"]
        if config.min_new_tokens and config.stop_tokens:
            logits = forbid(logits, config.stop_tokens, where=jnp.full((rows,), i < config.min_new_tokens))
        forced = jnp.zeros((rows,), bool)
        states = []
        for proc, proc_state in zip(processors, s["processor_states"], strict=True):
            logits, was_forced, proc_state = proc(logits, ctx, proc_state)
            forced, states = forced | was_forced, [*states, proc_state]
        token, logp = choose(jax.random.fold_in(rng, i), logits, config)
        token = jnp.where(done, config.pad_id, token)
        states = tuple(p.observe(token, ctx, st) for p, st in zip(processors, states, strict=True))
        tokens = s["tokens"].at[:, i].set(token)
        hit = jnp.isin(token, stop)
        for sequence in config.stop_sequences:
            hit = hit | ends_with(tokens, i + 1, sequence)
        hit = hit & ~done
        live = ~done
        position = jnp.where(live, s["position"] + 1, s["position"])
        # A stopped row feeds padding with segment 0: nothing it writes is ever attended to.
        next_logits, new_cache = forward(
            _unsqueeze(s["cache"], cache), token[:, None], position[:, None], live.astype(jnp.int32)[:, None]
        )
        return dict(
            step=i + 1,
            logits=jnp.where(live[:, None], next_logits, s["logits"]),
            cache=_squeeze(new_cache),
            position=position,
            done=done | hit,
            stopped=s["stopped"] | hit,
            tokens=tokens,
            positions=s["positions"].at[:, i].set(position),
            logprobs=s["logprobs"].at[:, i].set(jnp.where(live, logp, 0.0)),
            valid=s["valid"].at[:, i].set(live),
            forced=s["forced"].at[:, i].set(forced & live),
            processor_states=states,
        )

    final = jax.lax.while_loop(cond, body, init)
    final = {**final, "cache": _unsqueeze(final["cache"], cache)}
    keys = ("tokens", "positions", "logprobs", "valid", "forced", "stopped")
    return {k: final[k] for k in keys}, final
