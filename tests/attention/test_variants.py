"""Attention variants against the dense reference: exact ones equal it (with their equivalent mask),
approximations converge to it, every variant trains through the real loop, bad input fails clearly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.attention import dense_attention, get_attention, lowrank, sparse
from research.attention.blockwise import blockwise_attention

B, N, H, D = 2, 16, 4, 8
# Tiny shapes: XLA's CPU backend optimisations cost seconds per compile here and buy nothing.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run(fn, *args):
    """fn(*args), compiled once with FAST_COMPILE (array arguments only)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


# Two documents and trailing padding in row 0; one document in row 1.
SEGMENTS = np.array([[1] * 5 + [2] * 9 + [0] * 2, [1] * N], np.int32)


def _qkv(kv_heads, n=N, kv_len=None, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q = scale * rng.standard_normal((B, n, H, D))
    k = scale * rng.standard_normal((B, kv_len or n, kv_heads, D))
    v = rng.standard_normal((B, kv_len or n, kv_heads, D))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


# name -> (function with its options bound, equivalent [N, N] mask builder(causal) or None for "everything")
EXACT = {
    "blockwise": (functools.partial(blockwise_attention, block_size=4), None),
    "sliding": (functools.partial(sparse.sliding_attention, window=4), lambda c: sparse.sliding_mask(N, 4, causal=c)),
    "block_sparse": (
        functools.partial(sparse.block_sparse_attention, block_size=4, num_global=1),
        lambda c: sparse.block_sparse_mask(N, 4, 1, causal=c),
    ),
    "strided": (functools.partial(sparse.strided_attention, stride=4), lambda c: sparse.strided_mask(N, 4, causal=c)),
}


def _loss(fn, real, q, k, v):
    # A fixed random projection of the real rows' output: gradients reach every element.
    w = jax.random.normal(jax.random.key(1), q.shape)
    return jnp.sum(fn(q, k, v) * w * real[:, :, None, None])


# (kv_heads, causal, segments): GQA ratios 2, 1 (MHA) and heads (MQA), each of causal and segments
# on and off at least once, kept to three cases because each is one compile.
CASES = [(2, False, False), (H, True, True), (1, True, False)]


@pytest.mark.parametrize("kv_heads,causal,segments", CASES)
@pytest.mark.parametrize("name", list(EXACT))
def test_exact_variant_equals_dense_with_its_mask(name, kv_heads, causal, segments):
    fn, mask_fn = EXACT[name]
    q, k, v = _qkv(kv_heads)
    seg = jnp.asarray(SEGMENTS) if segments else None
    mask = None if mask_fn is None else mask_fn(causal)[None, None]
    # Padding queries (segment 0) attend to nothing: their output is unspecified, compare real rows.
    real = jnp.asarray(SEGMENTS != 0) if segments else jnp.ones((B, N), bool)

    def out_and_grads(q, k, v):
        ours = functools.partial(fn, causal=causal, segment_ids=seg)
        ref = functools.partial(dense_attention, causal=causal, segment_ids=seg, mask=mask)
        grads = lambda f: jax.grad(functools.partial(_loss, f, real), argnums=(0, 1, 2))(q, k, v)
        return ours(q, k, v), ref(q, k, v), grads(ours), grads(ref)

    out, ref, g_ours, g_ref = _run(out_and_grads, q, k, v)
    # float32 throughout; the variants sum the same terms in another order: ~1e-6 apart. Gradients too:
    # worst measured 2.4e-6 (blockwise MQA's dv, a sum over 4 heads of values up to ~5), so the outputs'
    # 2e-5 still leaves ~8x.
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-5, rtol=2e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5)


def test_the_equivalent_masks_are_really_sparse_and_differ():
    """Guards the test above: a mask that were all True would let any variant pass as 'dense'."""
    for mask_fn in (m for _, m in EXACT.values() if m is not None):
        for causal in (False, True):
            m = np.asarray(mask_fn(causal))
            full = np.tril(np.ones((N, N), bool)) if causal else np.ones((N, N), bool)
            assert m.sum() < full.sum() and (m <= full).all() and m.diagonal().all()


# The equivalent masks written out by hand from the patterns' definitions (sparse.py's docstrings) at
# length 8, row = query, column = key, 1 = may attend: the references for the *_mask builders above,
# which are sparse.py's own code. (window 4; blocks of 2 with block 0 global; stride 4.)
LITERAL_MASKS = {
    ("sliding", False): [  # |i - j| < 4
        "11110000",
        "11111000",
        "11111100",
        "11111110",
        "01111111",
        "00111111",
        "00011111",
        "00001111",
    ],
    ("sliding", True): [  # i - 4 < j <= i: the 4 most recent keys, itself included
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "01111000",
        "00111100",
        "00011110",
        "00001111",
    ],
    ("block_sparse", False): [  # blocks {0,1} {2,3} {4,5} {6,7}: neighbouring blocks, or either one is block 0
        "11111111",
        "11111111",
        "11111100",
        "11111100",
        "11111111",
        "11111111",
        "11001111",
        "11001111",
    ],
    ("block_sparse", True): [
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "11111000",
        "11111100",
        "11001110",
        "11001111",
    ],
    ("strided", False): [  # own chunk {0..3} / {4..7}, or the last key of a chunk (3, 7)
        "11110001",
        "11110001",
        "11110001",
        "11110001",
        "00011111",
        "00011111",
        "00011111",
        "00011111",
    ],
    ("strided", True): [
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "00011000",
        "00011100",
        "00011110",
        "00011111",
    ],
}
LITERAL_VARIANTS = {  # name -> (the variant, its *_mask builder), options as in LITERAL_MASKS
    "sliding": (
        functools.partial(sparse.sliding_attention, window=4),
        lambda c: sparse.sliding_mask(8, 4, causal=c),
    ),
    "block_sparse": (
        functools.partial(sparse.block_sparse_attention, block_size=2, num_global=1),
        lambda c: sparse.block_sparse_mask(8, 2, 1, causal=c),
    ),
    "strided": (
        functools.partial(sparse.strided_attention, stride=4),
        lambda c: sparse.strided_mask(8, 4, causal=c),
    ),
}


def _literal(rows):
    return np.array([[c == "1" for c in row] for row in rows])


@pytest.mark.parametrize("name", list(LITERAL_VARIANTS))
def test_patterns_equal_the_hand_written_masks(name):
    """Pins the references: sparse.py's mask builders, and the variants themselves against dense attention
    with the hand-written mask (so a pattern and its variant wrong the same way, say an off-by-one
    window in both, cannot pass as each other's reference)."""
    fn, mask_fn = LITERAL_VARIANTS[name]
    masks = [_literal(LITERAL_MASKS[name, causal]) for causal in (False, True)]
    for causal, want in zip((False, True), masks, strict=True):
        np.testing.assert_array_equal(np.asarray(mask_fn(causal)), want, err_msg=f"{name} causal={causal}")

    def both(q, k, v, full_mask, causal_mask):  # dense gets the causal part from the literal mask only
        pairs = ((False, full_mask), (True, causal_mask))
        return [(fn(q, k, v, causal=c), dense_attention(q, k, v, mask=m[None, None])) for c, m in pairs]

    for out, ref in _run(both, *_qkv(2, n=8), *map(jnp.asarray, masks)):
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)  # as above


@pytest.mark.parametrize(
    "q_len,kv_len,block,causal", [(32, 32, 8, True), (8, 24, 4, False), (12, 12, 16, True), (24, 24, 6, False)]
)
def test_blockwise_shapes_cross_attention_and_explicit_mask(q_len, kv_len, block, causal):
    q, _, _ = _qkv(2, n=q_len)
    _, k, v = _qkv(2, n=kv_len, seed=1)
    mask = jnp.asarray(np.random.default_rng(2).random((B, 1, q_len, kv_len)) < 0.7)
    mask = mask.at[:, :, :, 0].set(True)  # every query sees something
    both = lambda q, k, v, m: (
        blockwise_attention(q, k, v, causal=causal, mask=m, block_size=block),
        dense_attention(q, k, v, causal=causal, mask=m),
    )
    out, ref = _run(both, q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)
    out = _run(lambda q, k, v: blockwise_attention(q, k, v, causal=causal, block_size=block), q, k, v)
    ref = _run(lambda q, k, v: dense_attention(q, k, v, causal=causal), q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)


def test_blockwise_bfloat16_keeps_float32_softmax():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(2, n=64))
    out = _run(functools.partial(blockwise_attention, causal=True, block_size=16), q, k, v)
    assert out.dtype == jnp.bfloat16
    ref = _run(functools.partial(dense_attention, causal=True), q, k, v)
    # bf16 inputs and p cast to bf16 for the PV matmul in both: agree to a few bf16 ulps (2^-8).
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=3e-2)


def test_sliding_at_window_ge_length_is_dense():
    q, k, v = _qkv(2)
    for causal in (False, True):
        ours = _run(functools.partial(sparse.sliding_attention, causal=causal, window=N), q, k, v)
        np.testing.assert_allclose(ours, _run(functools.partial(dense_attention, causal=causal), q, k, v), atol=2e-5)


# --- Approximations. ---


def _rel_err(out, ref, real):
    out, ref = np.asarray(out)[real], np.asarray(ref)[real]
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def performer_reference(q, k, v, mask, num_features):
    """FAVOR+ written as the masked quadratic form (A * M) V / (A * M) 1 with A = phi(Q) phi(K)^T:
    the same features, no prefix sums, no chunks. mask: [b, n, n] bool."""
    d = q.shape[-1]
    w = np.asarray(lowrank.orthogonal_features(num_features, d), np.float64)
    kvh = k.shape[2]
    k, v = np.repeat(np.asarray(k, np.float64), H // kvh, 2), np.repeat(np.asarray(v, np.float64), H // kvh, 2)
    phi = lambda x: np.exp(x @ w.T - 0.5 * (x * x).sum(-1, keepdims=True)) / np.sqrt(num_features)
    x = d**-0.25
    a = np.einsum("bqhm,bkhm->bhqk", phi(np.asarray(q, np.float64) * x), phi(k * x)) * mask[:, None]
    with np.errstate(invalid="ignore"):  # padding rows: 0 / 0, never compared
        return np.einsum("bhqk,bkhd->bqhd", a, v) / a.sum(-1).transpose(0, 2, 1)[..., None]


@pytest.mark.parametrize("chunk,kv_heads", [(4, H), (8, 1)])
def test_performer_causal_prefix_sums_equal_the_masked_quadratic_form(chunk, kv_heads):
    """The chunked, segment-resetting prefix sums compute exactly the causal, per-document FAVOR+."""
    q, k, v = _qkv(kv_heads, scale=0.5)
    seg = np.array([[1] * 3 + [2] * 10 + [3] * 1 + [0] * 2, [1] * 9 + [2] * 7], np.int32)
    mask = np.tril(np.ones((N, N), bool))[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    performer = functools.partial(lowrank.performer_attention, causal=True, num_features=32, block_size=chunk)
    out = _run(lambda q, k, v, s: performer(q, k, v, segment_ids=s), q, k, v, jnp.asarray(seg))
    real = seg != 0
    # Stabilisers differ (float32 with max-subtraction vs float64 without): ~1e-6 relative.
    np.testing.assert_allclose(
        np.asarray(out)[real], performer_reference(q, k, v, mask, 32)[real], rtol=1e-4, atol=1e-5
    )


def test_performer_gradients_are_finite_with_padding():
    """A padding query sees no key (numerator = denominator = 0): its output is 0 and its gradient is too,
    not the 0/0 a clamped denominator's square underflows to (found by tests/test_config_fuzz.py)."""
    q, k, v = _qkv(1)
    seg = jnp.asarray(SEGMENTS)  # row 0 ends in two padding tokens
    loss = lambda q, k, v: jnp.sum(
        lowrank.performer_attention(q, k, v, causal=True, segment_ids=seg, num_features=16, block_size=8) ** 2
    )
    for grad in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_shrinks_with_features(causal):
    # |q|, |k| ~ 0.5 sqrt(d): FAVOR+ variance grows with exp(|q|^2 + |k|^2), keep it moderate.
    n = 64
    q, k, v = _qkv(2, n=n, scale=0.5)
    ref = dense_attention(q, k, v, causal=causal)
    real = np.ones((B, n), bool)
    approx = lambda m: functools.partial(lowrank.performer_attention, causal=causal, num_features=m, block_size=16)
    errs = [_rel_err(_run(approx(m), q, k, v), ref, real) for m in (16, 64, 256, 1024)]
    # Fixed seeds: measured ~[0.43, 0.16, 0.16, 0.08] non-causal; the error ~ 1/sqrt(m) halves per 4x
    # features in expectation, a single draw may stall for one step: monotone up to 20%, 3x down overall.
    assert all(b < 1.2 * a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.35 * errs[0] and errs[-1] < 0.15, errs


def test_linformer_error_shrinks_with_rank_and_is_exact_at_full_rank():
    n = 64
    q, k, v = _qkv(2, n=n)
    # Keys and values vary smoothly along the sequence (as trained attention's do), so pooling them loses little.
    k, v = (jnp.cumsum(x, axis=1) / jnp.sqrt(jnp.arange(1, n + 1))[None, :, None, None] for x in (k, v))
    ref = dense_attention(q, k, v)
    real = np.ones((B, n), bool)
    errs = [
        _rel_err(_run(functools.partial(lowrank.linformer_attention, rank=r), q, k, v), ref, real) for r in (4, 16, 64)
    ]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-5, errs  # rank == kv_len: the projection is the identity
    e = lowrank.linformer_projection(8, n)  # the documented [rank, kv_len] matrix form
    proj = lambda x: jnp.einsum("rn,bnhd->brhd", e, x)
    np.testing.assert_allclose(
        _run(functools.partial(lowrank.linformer_attention, rank=8), q, k, v),
        _run(dense_attention, q, proj(k), proj(v)),
        atol=1e-5,
    )


# --- Every variant through the real training loop. ---

CAUSAL_VARIANTS = ["blockwise", "sliding", "block_sparse", "strided", "performer"]


def _tiny_config(attention, data_dir):
    from research.config import default_config

    c = default_config()
    c.model.update(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, ffn="swiglu", mlp_dim=64, attention=attention)
    c.model.attention_options.update(block_size=16, window=16, stride=8, num_features=16, rank=16)
    c.data.update(name="key_recall/len64", data_dir=data_dir, seq_len=64)
    c.train.update(steps=2, batch_size=8, eval_every=2, checkpoint_every=2, eval_batches=1, log_every=1)
    c.train.async_checkpointing = False
    return c


def train_variants(workdir: str) -> None:
    """Trains each variant 2 steps with research.train.loop.train; prints one JSON line of results.

    Run in one subprocess for all variants: one device and unoptimised XLA compiles make each
    tiny run a few seconds instead of tens with the test session's 8 fake devices.
    """
    import json
    import pathlib

    from research.data import DataSpec, key_recall, load_sources  # noqa: F401  (key_recall registers)
    from research.train.loop import train

    data_dir = str(pathlib.Path(workdir) / "tfds")
    load_sources(DataSpec("key_recall/len64", data_dir, "text", "train", "validation", 64, 8, 1, 0))
    results = {}
    for name in [*CAUSAL_VARIANTS, "linformer"]:
        try:
            last = train(_tiny_config(name, data_dir), pathlib.Path(workdir) / name)
            results[name] = {k: last[k] for k in ("loss", "eval_loss", "grad_norm")}
        except ValueError as e:
            results[name] = {"error": str(e)}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = tmp_path_factory.mktemp("variants")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
        " --xla_llvm_disable_expensive_passes=true"
    )
    code = f"from tests.attention.test_variants import train_variants; train_variants({str(workdir)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.mark.parametrize("attention", CAUSAL_VARIANTS)
def test_variant_trains_through_the_loop(attention, trained):
    last = trained[attention]
    assert "error" not in last, last
    # From ~ln(263) = 5.6 at init; two steps of a 1-layer model move it only a little.
    assert np.isfinite(last["loss"]) and np.isfinite(last["eval_loss"]) and last["grad_norm"] > 0


def test_linformer_in_a_causal_lm_fails_clearly(trained):
    assert "linformer attention is non-causal" in trained["linformer"].get("error", ""), trained["linformer"]


# --- Bad input. ---


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(2)
    with pytest.raises(ValueError, match=r"window=5 must divide sequence length=16"):
        sparse.sliding_attention(q, k, v, causal=True, window=5)
    with pytest.raises(ValueError, match=r"block_size=3 must divide"):
        blockwise_attention(q, k, v, block_size=3)
    with pytest.raises(ValueError, match=r"stride=0 must be > 0"):
        sparse.strided_attention(q, k, v, stride=0)
    with pytest.raises(ValueError, match="non-causal.*pick a causal variant"):
        lowrank.linformer_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="linformer attention supports neither segment_ids"):
        lowrank.linformer_attention(q, k, v, segment_ids=jnp.asarray(SEGMENTS))
    with pytest.raises(ValueError, match="segment_ids only with causal=True"):
        lowrank.performer_attention(q, k, v, segment_ids=jnp.asarray(SEGMENTS))
    with pytest.raises(ValueError, match="not an explicit mask"):
        sparse.block_sparse_attention(q, k, v, mask=jnp.ones((N, N), bool))
    with pytest.raises(ValueError, match="self-attention: q_len=16 must equal kv_len=8"):
        sparse.sliding_attention(q, k[:, :8], v[:, :8])
    with pytest.raises(ValueError, match="multiple of kv heads"):
        blockwise_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2))
    with pytest.raises(ValueError, match="num_global=-1 must be >= 0"):
        sparse.block_sparse_attention(q, k, v, num_global=-1)
    with pytest.raises(ValueError, match="model.attention='nope'"):
        get_attention("nope")


def test_config_validation_names_the_option():
    from research.config import default_config, validate

    c = default_config()
    c.data.seq_len = 96
    c.model.attention = "sliding"
    c.model.attention_options.window = 64
    with pytest.raises(ValueError, match=r"model.attention_options.window=64 must divide data.seq_len=96"):
        validate(c)
    c.model.attention_options.window = 32
    validate(c)
    c.model.attention = "performer"
    c.model.attention_options.num_features = 0
    with pytest.raises(ValueError, match=r"model.attention_options.num_features=0 must be > 0"):
        validate(c)
