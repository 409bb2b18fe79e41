"""MFU's model FLOPs against XLA's own count of the compiled step, and the loop logging mfu."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.bench.peak import transformer_train_flops_per_token
from research.models import DecoderLM, ModelConfig
from research.train.metrics import read_metrics
from research.train.utilization import Utilization, device_peak_flops, train_flops_per_token


def _config(**kw):
    return ModelConfig(vocab_size=1024, num_layers=2, d_model=256, num_heads=8, max_len=128, **kw)


def _xla_flops_per_token(c, seq, batch=2):
    model = DecoderLM(c)
    tokens = jnp.zeros((batch, seq), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)["params"])

    def loss(p, t):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, t), t).mean()

    cost = jax.jit(jax.grad(loss)).lower(params, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / (batch * seq)


@pytest.mark.parametrize(
    "kw", [dict(ffn="gelu", num_kv_heads=8, mlp_dim=1024), dict(ffn="swiglu", num_kv_heads=2, mlp_dim=688)]
)
def test_model_flops_are_what_xla_counts_for_a_dense_step(kw):
    """Forward + backward of a dense model: the matmuls are all but ~1% of XLA's count (norms, softmax)."""
    c = _config(**kw)
    ours, xla = train_flops_per_token(c, 128), _xla_flops_per_token(c, 128)
    assert 0.97 < xla / ours < 1.05, (xla, ours)


def test_the_palm_formula_is_the_mha_4d_case_and_moe_counts_active_experts():
    c = _config(ffn="gelu", num_kv_heads=8, mlp_dim=1024)
    assert train_flops_per_token(c, 128) == transformer_train_flops_per_token(2, 256, 1024, 128)
    moe = _config(ffn="gelu", num_kv_heads=8, mlp_dim=1024, moe_num_experts=8, moe_top_k=1, moe_every=2)
    # One MoE block (of 2) with top-1: the same MLP FLOPs per token, plus the router's d x experts.
    assert train_flops_per_token(moe, 128) - train_flops_per_token(c, 128) == 6 * 256 * 8
    top2 = _config(ffn="gelu", num_kv_heads=8, mlp_dim=1024, moe_num_experts=8, moe_top_k=2, moe_every=2)
    assert train_flops_per_token(top2, 128) - train_flops_per_token(moe, 128) == 6 * 2 * 256 * 1024


def test_the_loop_logs_mfu_against_the_device_peak(tmp_path):
    from research.train.loop import train
    from research.train.tasks import task_config

    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(seq_len=32)
    c.train.update(steps=3, batch_size=8, eval_every=3, checkpoint_every=3, log_every=1, eval_batches=1, trackers="")
    data = math.gcd(8, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    train(c, tmp_path)
    records = read_metrics(tmp_path)
    header = records[0]
    device = jax.devices()[0]
    assert header["peak_flops_per_device"] == device_peak_flops(device.device_kind, device.platform)[0] > 0
    assert "measured float32 matmul" in header["peak_flops_source"]  # CPU: no data-sheet peak
    timed = [r for r in records if r.get("tokens_per_sec")]
    assert timed  # the first step's window holds the compile and is not timed
    for r in timed:
        want = (
            r["tokens_per_sec"]
            * header["model_flops_per_token"]
            / (header["peak_flops_per_device"] * jax.device_count())
        )
        np.testing.assert_allclose(r["mfu"], want, rtol=1e-9)
        assert 0 < r["mfu"] < 1
    assert "device_memory_gb" not in timed[0]  # the CPU backend reports no memory in use


def test_encoder_decoder_runs_log_no_mfu():
    from research.models import EncoderDecoderConfig

    assert Utilization(EncoderDecoderConfig(vocab_size=64), 128).metrics(1000.0) == {}
    assert "mfu" in Utilization(_config(), 128).metrics(1000.0)
