"""Low-rank / kernel approximations of softmax attention: Linformer and Performer (FAVOR+).

Both replace the [n, n] attention matrix by a product of thin matrices and so
cost O(n) time and memory, at the price of an approximation error that shrinks
as `rank` / `num_features` grow (tests measure it against dense).
Both are pure functions with no parameters of their own: Linformer's projection
is fixed mean pooling, Performer's random features a constant drawn from seed 0,
the same at every call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.attention.blockwise import block_len, check_heads, split_segment_ids
from research.attention.dense import dense_attention
from research.attention.registry import NO_CACHED_DECODING, register_attention

# --- Linformer (Wang et al. 2020). ---


def linformer_projection(rank: int, kv_len: int):
    """[rank, kv_len] block averaging: row r is the mean of keys r*c ... (r+1)*c - 1, c = kv_len / rank.

    Linformer's "pooling" projection choice. Why not a random Gaussian E: for a fixed
    (untrained) E, softmax(q (E k)^T) (E v) does not converge to dense as rank grows, so
    its error cannot be measured down; pooling is exact at rank = kv_len and degrades
    gracefully. A learned E, F would need parameters, which a pure attention function
    does not own.
    """
    c = kv_len // rank
    return np.kron(np.eye(rank, dtype=np.float32), np.full((1, c), 1.0 / c, np.float32))


@register_attention("linformer", options=("rank",), decode_mask=NO_CACHED_DECODING)
def linformer_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, rank=64):
    """softmax(q (E k)^T / sqrt(d)) (E v) with E: [rank, kv_len] (`linformer_projection`), applied
    as a mean over kv_len / rank consecutive keys.

    Cost O(q_len * rank * d) time, O(q_len * rank) memory. Non-causal only (E mixes future keys into every row)
    and no segment ids or masks (a projected row mixes keys of every segment): supported is
    causal=False, segment_ids=None, mask=None, rank dividing kv_len (clamped to kv_len).
    MHA/GQA/MQA: the projected keys keep their kv heads.
    """
    check_heads(q, k, v, "linformer")
    if causal:
        raise ValueError(
            "linformer attention is non-causal (its projection mixes future keys into every position);"
            " use it in an encoder with causal=False, or pick a causal variant (dense, blockwise, flash,"
            " sliding, block_sparse, strided, performer)"
        )
    if segment_ids is not None or mask is not None:
        raise ValueError("linformer attention supports neither segment_ids nor mask: its projection mixes all keys")
    b, kv_len, kvh, d = k.shape
    r = block_len(kv_len, rank, "rank", "kv_len", "linformer")
    # E @ k without E: a [rank, kv_len] constant would cost O(n * rank) FLOPs and bytes, pooling O(n).
    k_proj = k.reshape(b, r, kv_len // r, kvh, d).mean(2)  # [b, rank, kvh, d]
    v_proj = v.reshape(b, r, kv_len // r, kvh, d).mean(2)
    return dense_attention(q, k_proj, v_proj)


# --- Performer / FAVOR+ (Choromanski et al. 2021). ---


@functools.lru_cache(maxsize=32)
def orthogonal_features(num_features: int, head_dim: int, seed: int = 0) -> np.ndarray:
    """[num_features, head_dim] Gaussian directions, orthogonal within each block of head_dim rows,
    rescaled to chi(head_dim) norms: the orthogonal random features FAVOR+ uses (lower variance
    than i.i.d. ones). A constant: the same features at every call."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-num_features // head_dim)):
        qmat, _ = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))
        blocks.append(qmat.T)
    w = np.concatenate(blocks)[:num_features]
    norms = np.linalg.norm(rng.standard_normal((num_features, head_dim)), axis=1)
    return (w * norms[:, None]).astype(np.float32)


def _positive_features(x, omega, stabilizer_axes):
    """phi(x) = exp(w.x - |x|^2 / 2 - stab) / sqrt(m): E[phi(q).phi(k)] = exp(q.k) / exp(stab_q + stab_k).

    x: [..., d] float32 (already scaled by d^-1/4); omega [m, d]. The stabiliser (a max over
    `stabilizer_axes`, gradient stopped) keeps exp finite; it cancels in the normalised output.
    """
    proj = jnp.einsum("...d,md->...m", x, omega)
    stab = jax.lax.stop_gradient(proj.max(axis=stabilizer_axes, keepdims=True))
    sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    return jnp.exp(proj - sq - stab) / np.sqrt(omega.shape[0])


def _performer_causal(qf, kf, v, seg, chunk):
    """Causal linear attention by chunks: quadratic inside a chunk, prefix state between chunks.

    qf: [b, n, kvh, g, m]; kf: [b, n, kvh, m]; v: [b, n, kvh, d]; seg: [b, n] int (contiguous runs).
    Returns (numerator [b, n, kvh, g, d], denominator [b, n, kvh, g]).
    The state entering chunk c holds sum phi(k) v^T over earlier keys of the segment that the
    previous chunk ends in; a chunk that starts a new segment resets it. Exact for segment ids
    that form contiguous runs (what packing produces).
    """
    b, n, kvh, g, m = qf.shape
    d = v.shape[-1]
    nc = n // chunk
    qc = qf.reshape(b, nc, chunk, kvh, g, m)
    kc = kf.reshape(b, nc, chunk, kvh, m)
    vc = v.reshape(b, nc, chunk, kvh, d)
    sc = seg.reshape(b, nc, chunk)
    # Inside the chunk: causal and same segment, exactly.
    tri = jnp.tril(jnp.ones((chunk, chunk), bool))
    same = (sc[..., :, None] == sc[..., None, :]) & (sc[..., None, :] != 0) & tri  # [b, nc, C, C]
    a = jnp.einsum("bcqhgm,bckhm->bchgqk", qc, kc) * same[:, :, None, None]  # [b, nc, kvh, g, C, C]
    num = jnp.einsum("bchgqk,bckhd->bcqhgd", a, vc)
    den = jnp.einsum("bchgqk->bcqhg", a)
    # Between chunks: chunk c's contribution from keys of its last segment, then a resettable prefix sum.
    last = sc[..., -1]  # [b, nc]
    own = ((sc == last[..., None]) & (last[..., None] != 0)).astype(kc.dtype)  # [b, nc, C]
    kv_c = jnp.einsum("bckhm,bckhd,bck->bchmd", kc, vc, own)  # [b, nc, kvh, m, d]
    z_c = jnp.einsum("bckhm,bck->bchm", kc, own)  # [b, nc, kvh, m]
    prev_last = jnp.pad(last[:, :-1], ((0, 0), (1, 0)))  # segment the previous chunk ends in (0 before chunk 0)
    keep = (last == prev_last).astype(kc.dtype)  # [b, nc]: chunk c continues the running segment

    def combine(x, y):  # (keep, sum) pairs: state = keep * state + sum, associative
        (a1, s1, z1), (a2, s2, z2) = x, y
        return a1 * a2, a2[..., None, None, None] * s1 + s2, a2[..., None, None] * z1 + z2

    _, kv_inc, z_inc = jax.lax.associative_scan(combine, (keep, kv_c, z_c), axis=1)
    state = jnp.pad(kv_inc[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))  # entering chunk c
    z_state = jnp.pad(z_inc[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
    use = ((sc == prev_last[..., None]) & (sc != 0)).astype(qc.dtype)  # [b, nc, C]: query continues it
    num = num + jnp.einsum("bcqhgm,bchmd,bcq->bcqhgd", qc, state, use)
    den = den + jnp.einsum("bcqhgm,bchm,bcq->bcqhg", qc, z_state, use)
    return num.reshape(b, n, kvh, g, d), den.reshape(b, n, kvh, g)


@register_attention("performer", options=("num_features", "block_size"), decode_mask=NO_CACHED_DECODING)
def performer_attention(q, k, v, *, causal=False, segment_ids=None, mask=None, num_features=128, block_size=128):
    """FAVOR+: softmax kernel exp(q.k / sqrt(d)) ~ phi(q).phi(k) with positive orthogonal random
    features, so attention is phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1).

    Cost O(n * num_features * head_dim) time. Non-causal: two [m, d] sums, no segment ids or
    masks. Causal: prefix sums over chunks of block_size (which must divide the length),
    O(n/block_size * m * d) state memory, with segment ids honoured exactly when each segment is
    one contiguous run (packed rows; padding = 0). The features are fixed (seed 0), not redrawn.
    Error ~ 1/sqrt(num_features); it grows with |q|, |k| (exp of their norms).
    """
    check_heads(q, k, v, "performer")
    if mask is not None:
        raise ValueError("performer attention takes causal and segment_ids (causal only), not an explicit mask")
    if num_features <= 0:
        raise ValueError(f"performer attention: num_features={num_features} must be > 0")
    b, q_len, heads, d = q.shape
    kv_len, kvh = k.shape[1], k.shape[2]
    g = heads // kvh
    omega = jnp.asarray(orthogonal_features(num_features, d))
    scale = d**-0.25
    qf = _positive_features(q.astype(jnp.float32).reshape(b, q_len, kvh, g, d) * scale, omega, (-1,))
    kf = _positive_features(k.astype(jnp.float32) * scale, omega, (1, 3))  # one max over all keys: it must cancel
    vf = v.astype(jnp.float32)
    if causal:
        if q_len != kv_len:
            raise ValueError(f"causal performer attention needs q_len ({q_len}) == kv_len ({kv_len})")
        chunk = block_len(q_len, block_size, "block_size", "sequence length", "performer")
        if isinstance(segment_ids, tuple):
            raise ValueError("causal performer attention takes one [batch, len] segment_ids array, not a pair")
        q_seg, _ = split_segment_ids(segment_ids, q_len, kv_len)
        seg = jnp.ones((b, q_len), jnp.int32) if q_seg is None else q_seg
        num, den = _performer_causal(qf, kf, vf, seg, chunk)
    else:
        if segment_ids is not None:
            raise ValueError("performer attention supports segment_ids only with causal=True")
        kv = jnp.einsum("bnhm,bnhd->bhmd", kf, vf)  # [b, kvh, m, d]
        num = jnp.einsum("bnhgm,bhmd->bnhgd", qf, kv)
        den = jnp.einsum("bnhgm,bhm->bnhg", qf, kf.sum(1))
    # den > 0 for any query with a key; a padding query has none (num = den = 0) and gets 0. Dividing it by
    # 1 rather than by the clamp keeps its gradient finite: num / 1e-30 has a 0/0 (1e-30 squared) in it.
    out = num / jnp.where(den > 0, jnp.maximum(den, 1e-30), 1.0)[..., None]
    return out.reshape(b, q_len, heads, d).astype(q.dtype)
