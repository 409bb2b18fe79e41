"""Hardware peak and model-FLOP estimates, for turning tokens/s into a peak fraction."""

import time

import jax
import jax.numpy as jnp


def measure_matmul_peak_flops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Achievable matmul FLOP/s on this machine's default JAX device.

    Times a jit'd [n, n] @ [n, n] matmul (2*n^3 FLOPs); n=2048 is large enough to be
    compute-bound on CPU. Reports the *best* of `repeats` timed runs rather than the
    mean: on shared/noisy machines interference only ever makes a run slower, so the
    fastest run is the closest estimate of what the hardware can actually do.
    """
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype=dtype)
    b = jax.random.normal(kb, (n, n), dtype=dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile + warm caches outside the timed region
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# Dense (no sparsity) bfloat16 matmul peaks from the vendors' data sheets, FLOP/s, by a substring of
# jax's device_kind; the most specific match wins. float32 peaks differ and are not listed.
KNOWN_BF16_PEAKS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "B200": 2250e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def known_peak_flops(device_kind: str) -> float | None:
    """The data-sheet bfloat16 peak of a device kind ("NVIDIA H100 80GB HBM3" -> 989e12), or None if unknown."""
    matches = [k for k in KNOWN_BF16_PEAKS if k.lower() in device_kind.lower()]
    return KNOWN_BF16_PEAKS[max(matches, key=len)] if matches else None


def measure_read_bandwidth(mbytes: int = 64, repeats: int = 10) -> float:
    """Achievable bytes/s reading memory on the default device: a jitted sum over `mbytes` MB of float32.

    A decode step at batch 1 reads every weight once, so weights / this is its floor. Best of
    `repeats`, as in `measure_matmul_peak_flops`; the buffer is larger than the CPU's caches.
    """
    x = jnp.ones((mbytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        total(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return x.size * 4 / best


def transformer_train_flops_per_token(num_layers: int, d_model: int, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token: 6*(12*L*d^2 + V*d) + 12*L*d*seq.

    Convention of the PaLM paper (Chowdhery et al. 2022, appendix B, "6N + 12LHQT";
    cf. Chinchilla, Hoffmann et al. 2022, appendix F): 6 FLOPs per parameter per token
    for forward+backward, with N = 12*L*d^2 (attention 4d^2 + MLP 8d^2 per layer, with
    d_ff = 4d) plus the V*d unembedding matmul; the attention-score term 12*L*d*seq
    counts QK^T and AV over the full sequence (no causal-mask discount). Biases,
    layernorms and the embedding lookup are ignored.
    """
    L, d = num_layers, d_model
    return 6 * (12 * L * d * d + vocab * d) + 12 * L * d * seq_len


def decode_flops_per_token(num_layers: int, d_model: int, vocab: int, context_len: int) -> float:
    """Forward-only FLOPs for one decoded token with a KV cache: 2*(12*L*d^2 + V*d) + 4*L*d*ctx.

    Same conventions as `transformer_train_flops_per_token`, forward pass only
    (2 FLOPs/parameter), attending over `context_len` cached positions (QK^T and AV:
    2*2*L*d*ctx).
    """
    L, d = num_layers, d_model
    return 2 * (12 * L * d * d + vocab * d) + 4 * L * d * context_len
