"""Token processors: rules that change next-token logits inside the jitted sampling loop.

A processor sees the logits of every row before a token is chosen, with a
`StepContext` (which new token this is, the tokens generated so far, which rows
have stopped), and keeps per-row state of its own across steps (e.g. how far
into a forced sequence a row is). It may forbid tokens (mask them to -inf) or
force one (mask every other token); it reports which rows it forced, so the
sampler can mark those tokens: they are the processor's, not the model's, and
RL keeps them out of the policy loss. Budget forcing (cap or extend thinking),
answer tags and tool calls are processors.

Processors are frozen dataclasses: hashable, because the sampler's jit takes
them as static arguments. The built-in ones:
  ForbidTokens(ids)                 never emit these tokens
  ForceAfter(trigger, sequence)     once the generated tokens end with `trigger`, emit `sequence`
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -1e30


@struct.dataclass
class StepContext:
    step: jax.Array  # [] index (0-based) of the new token being chosen
    generated: jax.Array  # [rows, max_new_tokens] new tokens so far; pad_id from `step` on and after a stop
    done: jax.Array  # [rows] bool: the row has stopped; its token is ignored


def forbid(logits, ids, where=None):
    """logits [rows, vocab] with `ids` masked out (in rows where `where` [rows] is True; all if None)."""
    ids = jnp.asarray(ids, jnp.int32)
    banned = jnp.zeros(logits.shape[-1], bool).at[ids].set(True)[None, :]  # [1, vocab]
    if where is not None:
        banned = banned & where[:, None]
    return jnp.where(banned, NEG_INF, logits)


def force(logits, token, where):
    """logits [rows, vocab] allowing only `token` [rows] (or a scalar) in rows where `where` [rows] is True."""
    token = jnp.broadcast_to(jnp.asarray(token, jnp.int32), where.shape)
    only = jnp.arange(logits.shape[-1])[None, :] == token[:, None]  # [rows, vocab]
    return jnp.where(where[:, None] & ~only, NEG_INF, logits)


def ends_with(generated, step, sequence) -> jax.Array:
    """[rows] bool: the tokens generated before `step` end with `sequence` (a non-empty tuple of ids)."""
    n = len(sequence)
    idx = step - n + jnp.arange(n)  # the last n generated positions
    window = jnp.take(generated, jnp.clip(idx, 0, generated.shape[1] - 1), axis=1)  # [rows, n]
    return (step >= n) & jnp.all(window == jnp.asarray(sequence, jnp.int32)[None, :], axis=1)


class TokenProcessor:
    """Base class. Subclasses are frozen dataclasses and override `__call__` (and `init_state`, `observe`)."""

    def init_state(self, rows: int):
        """Per-row state carried through the loop (a pytree of [rows, ...] arrays); none by default."""
        del rows
        return ()

    def __call__(self, logits, ctx: StepContext, state):
        """-> (logits, forced [rows] bool, state). Runs under jit before the token of `ctx.step` is chosen."""
        raise NotImplementedError

    def observe(self, token, ctx: StepContext, state):
        """The state after `token` [rows] was chosen at `ctx.step`."""
        del token, ctx
        return state


@dataclasses.dataclass(frozen=True)
class ForbidTokens(TokenProcessor):
    """Never emit `ids` (e.g. a special token the model must not produce)."""

    ids: tuple[int, ...]

    def __post_init__(self):
        if not self.ids:
            raise ValueError("ForbidTokens needs at least one token id")

    def __call__(self, logits, ctx, state):
        return forbid(logits, self.ids), jnp.zeros(logits.shape[0], bool), state


@dataclasses.dataclass(frozen=True)
class ForceAfter(TokenProcessor):
    """Once a row's generated tokens end with `trigger`, emit `sequence` next, one token per step.

    E.g. an answer tag right after a closing think tag, or a fixed tool-call opener. The state is
    each row's position in `sequence` (-1: not forcing). A trigger inside the forced sequence itself
    does not restart it.
    """

    trigger: tuple[int, ...]
    sequence: tuple[int, ...]

    def __post_init__(self):
        if not self.trigger or not self.sequence:
            raise ValueError("ForceAfter needs a non-empty trigger and a non-empty sequence")

    def init_state(self, rows: int):
        return jnp.full((rows,), -1, jnp.int32)

    def __call__(self, logits, ctx, state):
        start = (state < 0) & ends_with(ctx.generated, ctx.step, self.trigger)
        state = jnp.where(start, 0, state)
        active = state >= 0
        token = jnp.asarray(self.sequence, jnp.int32)[jnp.clip(state, 0, len(self.sequence) - 1)]
        return force(logits, token, active), active, state

    def observe(self, token, ctx, state):
        del token, ctx
        advanced = jnp.where(state >= 0, state + 1, state)
        return jnp.where(advanced >= len(self.sequence), -1, advanced)
