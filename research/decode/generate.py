"""KV-cache generation: prefill, then one lax.while_loop of single-token steps, all in one jit."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.decode.sampling import sample_logits


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int):
    """Left-pads to the longest prompt, so every row's next token goes to the same cache slot.

    Returns (tokens, positions, segment_ids) as int32 [batch, prompt_len];
    padding has segment id 0 and is never attended to.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be non-empty token lists")
    length = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segment_ids = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p) :] = p
        segment_ids[i, length - len(p) :] = 1
        positions[i, length - len(p) :] = np.arange(len(p))
    return tokens, positions, segment_ids


def init_cache(model, batch: int, cache_len: int):
    """Zeroed KV cache for `cache_len` slots, shaped by an abstract (allocation-free) decode pass."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((batch, cache_len), jnp.int32), decode=True)["cache"]
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens", "pad_id")
)
def _generate(
    params,
    tokens,
    positions,
    segment_ids,
    rng,
    *,
    model,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    stop_tokens,
    pad_id,
):
    batch, prompt_len = tokens.shape
    cache = init_cache(model, batch, prompt_len + max_new_tokens)

    def forward(cache, tokens, positions, segment_ids):
        logits, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            positions=positions,
            segment_ids=segment_ids,
            decode=True,
            mutable=["cache"],
        )
        return logits[:, -1], mutated["cache"]

    logits, cache = forward(cache, tokens, positions, segment_ids)  # prefill: the whole prompt at once
    return sample_loop(
        forward,
        logits,
        cache,
        positions[:, -1],
        rng,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=stop_tokens,
        pad_id=pad_id,
    )


def sample_loop(
    forward, logits, cache, position, rng, *, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id
):
    """The token-by-token loop after a prefill, shared by decoder-only and encoder-decoder generation.

    forward(cache, tokens [b, 1], positions [b, 1], segment_ids [b, 1]) -> (logits [b, vocab], cache);
    logits: the prefill's last-position logits; position: [b], the prefill's last position.
    Returns the new tokens [b, max_new_tokens], pad_id after a row's stop token.
    """
    batch = logits.shape[0]
    stop = jnp.asarray(stop_tokens or (-1,), jnp.int32)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    state = dict(
        step=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        out=out,
        position=position,
        done=jnp.zeros((batch,), bool),
        rng=rng,
    )

    def cond(s):
        return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

    def body(s):
        rng, key = jax.random.split(s["rng"])
        token = sample_logits(key, s["logits"], temperature=temperature, top_k=top_k, top_p=top_p)
        token = jnp.where(s["done"], pad_id, token)
        out = s["out"].at[:, s["step"]].set(token)
        done = s["done"] | jnp.isin(token, stop)
        position = s["position"] + 1
        ones = jnp.ones((batch, 1), jnp.int32)
        logits, cache = forward(s["cache"], token[:, None], position[:, None], ones)
        return dict(step=s["step"] + 1, logits=logits, cache=cache, out=out, position=position, done=done, rng=rng)

    final = jax.lax.while_loop(cond, body, state)
    return final["out"]


def generate(
    model,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    rng=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
) -> list[list[int]]:
    """Continues each prompt by up to `max_new_tokens` tokens.

    Returns, per prompt, the new tokens up to and including the first stop
    token. Prompts may differ in length. Raises before compiling if a prompt
    plus the new tokens exceeds the model's context or holds ids outside the vocabulary.
    """
    c = model.config
    longest = max((len(p) for p in prompts), default=0)
    if longest >= c.max_len:
        raise ValueError(f"a prompt of {longest} tokens leaves no room in the context, model.max_len={c.max_len}")
    if longest + max_new_tokens > c.max_len:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the context, model.max_len={c.max_len}"
        )
    for i, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < c.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token ids {bad[:5]} outside [0, model.vocab_size={c.vocab_size})")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    tokens, positions, segment_ids = pad_prompts(prompts, pad_id)
    out = _generate(
        params,
        tokens,
        positions,
        segment_ids,
        jax.random.key(0) if rng is None else rng,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        stop_tokens=tuple(stop_tokens),
        pad_id=pad_id,
    )
    return cut_at_stop(out, stop_tokens)


def cut_at_stop(out, stop_tokens) -> list[list[int]]:
    """Generated rows [b, n] -> lists ending at (and including) each row's first stop token."""
    results = []
    for row in np.asarray(out).tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop_tokens), len(row))
        results.append(row[:cut])
    return results
