"""Positional encodings: sinusoidal (Vaswani et al.) and rotary (RoPE, Su et al.).

Learned absolute positions are a plain embedding table and live in the model;
"relative" is T5's bucketed attention bias (research.layers.relative_position),
which encoders and encoder-decoders support.
"""

import jax.numpy as jnp

POSITIONS = ("learned", "sinusoidal", "rope", "relative")


def sinusoidal_embedding(positions, d_model: int, *, max_timescale: float = 10_000.0):
    """[..., len] int positions -> [..., len, d_model] float32 (sin on the first half, cos on the second)."""
    half = d_model // 2
    inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [..., len, half]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if d_model % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def apply_rope(x, positions, *, theta: float = 10_000.0):
    """Rotates pairs (x_i, x_{i+d/2}) of x by position-dependent angles.

    x: [batch, len, heads, head_dim]; positions: [batch, len].
    q·k after rotation depends on positions only through their difference,
    which is what makes RoPE a relative encoding. Computed in float32.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    half = head_dim // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, len, half]
    sin = jnp.sin(angles)[:, :, None, :]  # [b, len, 1, half]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
