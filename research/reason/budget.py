"""Budget forcing (s1, Muennighoff et al. 2025): cap or extend a model's thinking inside the jitted loop.

A response has the shape  <think> thinking </think> <answer> answer </answer> [EOS],  where each tag
is one token id and "Wait" is a short sequence of ordinary ids. Two token processors
(research/decode/processors.py) control it, tokenizer-agnostic (they take ids):

  ForcePrefix(sequence)   the first len(sequence) new tokens are `sequence`, forced: (<think>,) for CoT
                          prompting, (<answer>,) for a direct answer.
  BudgetForcing(...)      caps thinking at `max_thinking` tokens and/or makes the model append `num_waits`
                          Waits before it may close its thinking; tags the answer after </think>.

Thinking tokens are the tokens strictly between think_open (the model's or forced) and the next
think_close, forced Wait tokens included. The rules, for a row that is thinking:

  Cap     at `max_thinking` = B thinking tokens, force think_close then answer_open (one per step):
          a row that would think longer has exactly B thinking tokens.
  Extend  while the row has appended fewer than `num_waits` = m Waits, think_close is suppressed: its
          probability moves onto wait[0] (logit[wait[0]] <- logaddexp(logit[wait[0]], logit[think_close]),
          think_close <- -inf). When the row emits wait[0] it is counted as one Wait and wait[1:] is forced.
  Answer  when the model closes its thinking itself, answer_open is forced right after (as after a cap).

Why a Wait is counted when wait[0] is emitted: the redirect changes the distribution, it forces
nothing, so wait[0] is the model's own draw (not forced; its log-prob is that of the merged mass and it
stays in the policy loss), and which mass it came from (the suppressed close or wait[0]'s own) cannot be
told apart nor needs to be: counting it on emission keeps the state a function of the tokens alone, so
a row that wants to stop gets exactly m Waits before it may close, and a host can replay the count.
After m Waits wait[0] is an ordinary token again.

Precedence: the cap wins over everything: at B thinking tokens close is forced even if Waits are still
owed or a Wait's tail is half forced (the tail is dropped). A forced sequence (a Wait's tail, the close
and answer tags) is never interrupted by the extend rule. Forcing sets the forced token's logit to 0 and
every other to -inf, so it holds even if an earlier processor forbade the token (a ForbidTokens on
think_close that keeps a model thinking, say); put BudgetForcing after any processor that forbids or
forces its ids. Only the first thinking span counts: think_open inside or after it is an ordinary token.
A continued state (sample(state=...)) starts a fresh BudgetForcing state.

Host-side: `thinking_lengths` and `count_waits` measure responses; `check_budget` validates a budget
from a config against max_new_tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from research.decode.processors import NEG_INF, TokenProcessor

# BudgetState.phase: where the row is in  [prefix] <think> thinking </think> [answer ...]
BEFORE, THINKING, AFTER = 0, 1, 2
# BudgetState.mode: which forced sequence the row is inside (pos: the index of its next token)
NONE, WAIT_TAIL, CLOSE = 0, 1, 2  # CLOSE is (think_close, *answer_open)


def _only(logits, token, where):
    """logits [rows, vocab] that are a point mass on `token` [rows] (logit 0, log-prob 0) where `where`."""
    only = jnp.arange(logits.shape[-1])[None, :] == token[:, None]
    return jnp.where(where[:, None], jnp.where(only, 0.0, NEG_INF), logits)


def _check_ids(owner: str, **ids) -> None:
    for name, value in ids.items():
        values = value if isinstance(value, tuple) else (value,)
        if any(not isinstance(v, int | np.integer) or v < 0 for v in values):
            raise ValueError(f"{owner}.{name}={value!r}: token ids must be ints >= 0")


@dataclasses.dataclass(frozen=True)
class ForcePrefix(TokenProcessor):
    """The first len(sequence) new tokens are `sequence` (steps 0..len-1), each forced."""

    sequence: tuple[int, ...]

    def __post_init__(self):
        if not self.sequence:
            raise ValueError("ForcePrefix.sequence is empty: give at least one token id")
        _check_ids("ForcePrefix", sequence=tuple(self.sequence))

    def __call__(self, logits, ctx, state):
        n = len(self.sequence)
        active = jnp.full((logits.shape[0],), ctx.step < n)
        token = jnp.asarray(self.sequence, jnp.int32)[jnp.clip(ctx.step, 0, n - 1)]
        token = jnp.broadcast_to(token, active.shape)
        return _only(logits, token, active), active, state


@struct.dataclass
class BudgetState:
    """BudgetForcing's per-row state, all [rows] int32."""

    phase: jax.Array  # BEFORE -> (think_open) -> THINKING -> (think_close) -> AFTER
    count: jax.Array  # thinking tokens so far (forced Wait tokens included)
    waits: jax.Array  # Waits appended so far (counted when wait[0] is emitted while some are owed)
    mode: jax.Array  # NONE, WAIT_TAIL (forcing wait[1:]) or CLOSE (forcing think_close, *answer_open)
    pos: jax.Array  # index of the next forced token inside the mode's sequence


@dataclasses.dataclass(frozen=True)
class BudgetForcing(TokenProcessor):
    """Caps thinking at `max_thinking` tokens (0: no cap) and appends `num_waits` Waits before a close.

    See the module docstring for the rules and their precedence.
    """

    think_open: int
    think_close: int
    answer_open: tuple[int, ...] = ()
    max_thinking: int = 0
    num_waits: int = 0
    wait: tuple[int, ...] = ()

    def __post_init__(self):
        name = "BudgetForcing"
        _check_ids(name, think_open=self.think_open, think_close=self.think_close)
        _check_ids(name, answer_open=tuple(self.answer_open), wait=tuple(self.wait))
        if self.think_open == self.think_close:
            raise ValueError(f"{name}.think_close={self.think_close} equals think_open: they must differ")
        if self.max_thinking < 0:
            raise ValueError(f"{name}.max_thinking={self.max_thinking} must be >= 0 (0: no cap)")
        if self.num_waits < 0:
            raise ValueError(f"{name}.num_waits={self.num_waits} must be >= 0")
        if self.num_waits > 0 and not self.wait:
            raise ValueError(f"{name}.wait=() is empty but num_waits={self.num_waits}: give the Wait token ids")
        if self.think_close in self.wait:
            raise ValueError(f"{name}.wait={self.wait} holds think_close={self.think_close}")

    @property
    def _close_seq(self) -> tuple[int, ...]:
        return (self.think_close, *self.answer_open)

    @property
    def _tail(self) -> tuple[int, ...]:
        return tuple(self.wait[1:])

    def init_state(self, rows: int) -> BudgetState:
        zeros = jnp.zeros((rows,), jnp.int32)
        return BudgetState(phase=zeros, count=zeros, waits=zeros, mode=zeros, pos=zeros)

    def _next_forced(self, s: BudgetState) -> jax.Array:
        """[rows] the forced token at (mode, pos) (meaningless where mode is NONE)."""
        close = jnp.asarray(self._close_seq, jnp.int32)
        tail = jnp.asarray(self._tail or (0,), jnp.int32)
        return jnp.where(
            s.mode == CLOSE,
            close[jnp.clip(s.pos, 0, len(close) - 1)],
            tail[jnp.clip(s.pos, 0, len(tail) - 1)],
        )

    def __call__(self, logits, ctx, state: BudgetState):
        thinking = state.phase == THINKING
        # Cap: at B thinking tokens start forcing the close (over a Wait tail or owed Waits). In THINKING
        # the mode is never CLOSE yet (CLOSE starts with think_close, which ends THINKING), so this fires once.
        if self.max_thinking:
            cap = thinking & (state.count >= self.max_thinking)
            state = state.replace(mode=jnp.where(cap, CLOSE, state.mode), pos=jnp.where(cap, 0, state.pos))
        forcing = (state.mode != NONE) & ~ctx.done
        if self.num_waits:
            # Extend: an unforced thinking row that still owes Waits cannot close; the close's mass goes to wait[0].
            owe = thinking & ~forcing & (state.waits < self.num_waits)
            w0, close = self.wait[0], self.think_close
            merged = jnp.logaddexp(logits[:, w0], logits[:, close])
            logits = logits.at[:, w0].set(jnp.where(owe, merged, logits[:, w0]))
            logits = logits.at[:, close].set(jnp.where(owe, NEG_INF, logits[:, close]))
        return _only(logits, self._next_forced(state), forcing), forcing, state

    def observe(self, token, ctx, state: BudgetState) -> BudgetState:
        s = state
        forcing = s.mode != NONE
        thinking = s.phase == THINKING
        # 1. Advance the forced sequence the row is in; leave it at its end.
        length = jnp.where(s.mode == CLOSE, len(self._close_seq), len(self._tail))
        pos = jnp.where(forcing, s.pos + 1, s.pos)
        ended = forcing & (pos >= length)
        mode, pos = jnp.where(ended, NONE, s.mode), jnp.where(ended, 0, pos)
        # 2. Phase: the first think_open starts thinking; think_close (forced or not) ends it.
        opens = (s.phase == BEFORE) & (token == self.think_open)
        closes = thinking & (token == self.think_close)
        phase = jnp.where(opens, THINKING, jnp.where(closes, AFTER, s.phase))
        count = s.count + (thinking & ~closes).astype(jnp.int32)
        # 3. The model closed by itself: force answer_open next (CLOSE from its second token).
        if self.answer_open:
            by_model = closes & ~forcing
            mode, pos = jnp.where(by_model, CLOSE, mode), jnp.where(by_model, 1, pos)
        # 4. The model emitted wait[0] while owing Waits: one more Wait; force its tail.
        waits = s.waits
        if self.num_waits:
            new_wait = thinking & ~forcing & (token == self.wait[0]) & (s.waits < self.num_waits)
            waits = waits + new_wait.astype(jnp.int32)
            if self._tail:
                mode, pos = jnp.where(new_wait, WAIT_TAIL, mode), jnp.where(new_wait, 0, pos)
        new = BudgetState(phase=phase, count=count, waits=waits, mode=mode, pos=pos)
        # A stopped row's token is padding: its state stays.
        return jax.tree.map(lambda a, b: jnp.where(ctx.done, a, b), s, new)


def check_budget(max_thinking: int, max_new_tokens: int, field: str = "max_thinking") -> None:
    """Raises unless 0 < max_thinking < max_new_tokens (a budget that leaves room for the answer)."""
    if max_thinking <= 0:
        raise ValueError(f"{field}={max_thinking} must be > 0")
    if max_thinking >= max_new_tokens:
        raise ValueError(
            f"{field}={max_thinking} leaves no room for the answer: it must be < max_new_tokens={max_new_tokens}"
        )


def _thinking_span(response: Sequence[int], think_open: int, think_close: int) -> tuple[int, int]:
    """[start, end) of the tokens strictly between the first think_open and the next think_close
    (to the end if never closed); (0, 0) without think_open."""
    response = list(response)
    if think_open not in response:
        return 0, 0
    start = response.index(think_open) + 1
    end = response.index(think_close, start) if think_close in response[start:] else len(response)
    return start, end


def thinking_lengths(responses: Sequence[Sequence[int]], think_open: int, think_close: int) -> np.ndarray:
    """[n] int: each response's thinking tokens (see _thinking_span); 0 without think_open."""
    spans = [_thinking_span(r, think_open, think_close) for r in responses]
    return np.asarray([end - start for start, end in spans], np.int64)


def count_waits(
    response: Sequence[int], wait: Sequence[int], think_open: int | None = None, think_close: int | None = None
) -> int:
    """Non-overlapping occurrences of `wait` in the response's thinking span (given the think ids; the
    whole response without them)."""
    wait = list(wait)
    if not wait:
        raise ValueError("count_waits: wait is empty")
    if (think_open is None) != (think_close is None):
        raise ValueError("count_waits: give both think_open and think_close, or neither")
    tokens = list(response)
    if think_open is not None:
        start, end = _thinking_span(tokens, think_open, think_close)
        tokens = tokens[start:end]
    count, i = 0, 0
    while i + len(wait) <= len(tokens):
        if tokens[i : i + len(wait)] == wait:
            count, i = count + 1, i + len(wait)
        else:
            i += 1
    return count
