"""Model FLOPs utilisation (MFU) and device memory, for the training log and progress bar.

MFU = tokens/s x model FLOPs per token / (peak FLOP/s per device x devices). Model
FLOPs follow PaLM's convention (Chowdhery et al. 2022, appendix B): 6 per matmul
weight a token passes through (forward + backward), counting only the top-k experts
of an MoE layer and the unembedding, plus 12 L d seq for attention scores and values
(the causal mask is not discounted). Work the hardware does beyond that (norms,
softmax, rematerialisation, a PEFT run's frozen base without weight gradients) does
not count, so MFU compares runs and machines, not kernels. A PEFT run is counted as
full training of its model, as most MFU reports do; encoder-decoder runs log no MFU.

The peak is the data-sheet dense bfloat16 peak of the device kind where it is known
(research.bench.peak.KNOWN_BF16_PEAKS: GPUs and TPUs), else a measured matmul peak on
this device (float32 on CPU, whose bfloat16 is emulated), measured once per process.
Device memory is XLA's `bytes_in_use`, the largest over this process's devices, where
the backend reports it (GPU, TPU); the CPU backend does not, and nothing is logged.
"""

import functools

import jax

from research.bench.peak import known_peak_flops, measure_matmul_peak_flops
from research.models import EncoderDecoderConfig, ModelConfig


def train_flops_per_token(c: ModelConfig, seq_len: int) -> float:
    """Model FLOPs one trained token costs (module docstring); the PaLM formula for MHA and d_ff = 4d."""
    d, L = c.d_model, c.num_layers
    attention = d * c.head_dim * 2 * (c.num_heads + c.num_kv_heads)  # q and out; k and v
    per_matrix = 3 if c.ffn in ("swiglu", "geglu") else 2  # a gated MLP has two input projections

    def mlp(width):
        return per_matrix * d * width

    moe_layers = sum((i + 1) % c.moe_every == 0 for i in range(L)) if c.moe_num_experts else 0
    expert_width = c.moe_mlp_dim if c.moe_mlp_dim > 0 else c.mlp_dim
    moe = c.moe_top_k * mlp(expert_width) + d * c.moe_num_experts  # active experts and the router
    weights = L * attention + (L - moe_layers) * mlp(c.mlp_dim) + moe_layers * moe + c.vocab_size * d
    return 6 * weights + 12 * L * d * seq_len


@functools.cache
def device_peak_flops(device_kind: str, platform: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    if platform != "cpu" and (known := known_peak_flops(device_kind)):
        return known, f"data sheet, bfloat16 ({device_kind})"
    dtype = "float32" if platform == "cpu" else "bfloat16"
    return measure_matmul_peak_flops(dtype, n=1024, repeats=3), f"measured {dtype} matmul ({device_kind})"


def device_memory_bytes() -> int | None:
    """Bytes XLA holds on the busiest local device, or None where the backend does not say (CPU)."""
    used = [(d.memory_stats() or {}).get("bytes_in_use") for d in jax.local_devices()]
    used = [u for u in used if u is not None]
    return max(used) if used else None


class Utilization:
    """What the loop adds to each log line: mfu and device_memory_gb (where each is known)."""

    def __init__(self, model_config, seq_len: int):
        # An encoder-decoder's tokens split into inputs and targets with their own lengths: not counted.
        counted = isinstance(model_config, ModelConfig) and not isinstance(model_config, EncoderDecoderConfig)
        self.flops_per_token = train_flops_per_token(model_config, seq_len) if counted else None
        device = jax.devices()[0]
        self.peak, self.peak_source = device_peak_flops(device.device_kind, device.platform)
        self.num_devices = jax.device_count()

    def header(self) -> dict:
        """Logged once, at step 0: how MFU is computed in this run."""
        out = {"peak_flops_per_device": self.peak, "peak_flops_source": self.peak_source}
        if self.flops_per_token:
            out["model_flops_per_token"] = self.flops_per_token
        return out

    def metrics(self, tokens_per_sec: float | None) -> dict:
        out = {}
        if self.flops_per_token and tokens_per_sec:
            out["mfu"] = tokens_per_sec * self.flops_per_token / (self.peak * self.num_devices)
        if (used := device_memory_bytes()) is not None:
            out["device_memory_gb"] = used / 1e9
        return out
