"""Llama <-> DecoderLM: RoPE (rotating halves, as ours does), GQA, RMSNorm, SwiGLU, no biases, untied head.

Llama's nn.Linear weights are [out, in]; ours are [in, out] split per head:
query [d, heads, head_dim], key/value [d, kv_heads, head_dim], out [heads, head_dim, d].
Head h of the query uses kv head h // (heads / kv_heads) on both sides.
"""

import numpy as np

from research.models.decoder import DecoderLM, ModelConfig, init_params
from research.models.hf.common import Tensors, require

MODEL_TYPES = ("llama",)
PREFIXES = ()
IGNORE = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)  # a buffer older files carry

build = DecoderLM
init = init_params


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"Llama rope_type={kind!r} (scaled RoPE) is not supported; only 'default'")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10_000.0)))


def config_from_hf(cfg: dict, **overrides) -> ModelConfig:
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act={cfg['hidden_act']!r} is not supported; only 'silu' (SwiGLU)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("Llama checkpoints with attention_bias or mlp_bias are not supported")
    head_dim = cfg.get("head_dim") or d // heads
    if head_dim * heads != d:
        raise ValueError(f"Llama head_dim={head_dim} * num_attention_heads={heads} must equal hidden_size={d}")
    tied = cfg.get("tie_word_embeddings", False)
    return ModelConfig(
        **{
            **dict(
                vocab_size=cfg["vocab_size"],
                num_layers=cfg["num_hidden_layers"],
                d_model=d,
                num_heads=heads,
                num_kv_heads=cfg.get("num_key_value_heads") or heads,
                mlp_dim=cfg["intermediate_size"],
                ffn="swiglu",
                norm="rmsnorm",
                norm_eps=cfg.get("rms_norm_eps", 1e-6),
                position="rope",
                rope_theta=_rope_theta(cfg),
                max_len=cfg.get("max_position_embeddings", 2048),
                tie_embeddings=tied,
                scale_tied_logits=False,
                use_bias=False,
            ),
            **overrides,
        }
    )


def check(c: ModelConfig) -> None:
    for field, allowed in (
        ("position", ("rope",)),
        ("norm", ("rmsnorm",)),
        ("ffn", ("swiglu",)),
        ("use_bias", (False,)),
    ):
        require(c, field, allowed, "Llama")
    if c.tie_embeddings:
        require(c, "scale_tied_logits", (False,), "Llama")
    if getattr(c, "moe_num_experts", 0):
        raise ValueError("model.moe_num_experts > 0 cannot be written as a Llama checkpoint")


def hf_config(c: ModelConfig) -> dict:
    return dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=c.vocab_size,
        num_hidden_layers=c.num_layers,
        hidden_size=c.d_model,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        intermediate_size=c.mlp_dim,
        hidden_act="silu",
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta),
        max_position_embeddings=c.max_len,
        tie_word_embeddings=c.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
    )


def import_tensors(t: Tensors, c: ModelConfig) -> dict[str, np.ndarray]:
    d, h, kvh, hd, f = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
    out = {
        "embed/embedding": t.take("model.embed_tokens.weight", (c.vocab_size, d)),
        "final_norm/scale": t.take("model.norm.weight", (d,)),
    }
    if c.tie_embeddings:
        if "lm_head.weight" in t:  # a tied checkpoint may store the copy; it must be the embedding
            t.take("lm_head.weight", (c.vocab_size, d))
    else:
        out["lm_head/kernel"] = t.take("lm_head.weight", (c.vocab_size, d)).T
    for i in range(c.num_layers):
        src, dst = f"model.layers.{i}.", f"block_{i}/"
        out[dst + "attn_norm/scale"] = t.take(src + "input_layernorm.weight", (d,))
        out[dst + "mlp_norm/scale"] = t.take(src + "post_attention_layernorm.weight", (d,))
        out[dst + "attn/query"] = t.take(src + "self_attn.q_proj.weight", (h * hd, d)).T.reshape(d, h, hd)
        out[dst + "attn/key"] = t.take(src + "self_attn.k_proj.weight", (kvh * hd, d)).T.reshape(d, kvh, hd)
        out[dst + "attn/value"] = t.take(src + "self_attn.v_proj.weight", (kvh * hd, d)).T.reshape(d, kvh, hd)
        out[dst + "attn/out"] = t.take(src + "self_attn.o_proj.weight", (d, h * hd)).T.reshape(h, hd, d)
        out[dst + "mlp/wi_gate/kernel"] = t.take(src + "mlp.gate_proj.weight", (f, d)).T
        out[dst + "mlp/wi_up/kernel"] = t.take(src + "mlp.up_proj.weight", (f, d)).T
        out[dst + "mlp/wo/kernel"] = t.take(src + "mlp.down_proj.weight", (d, f)).T
    t.check_all_used(IGNORE)
    return out


def export_tensors(p: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    check(c)
    d, h, kvh, hd = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
    out = {"model.embed_tokens.weight": p["embed/embedding"], "model.norm.weight": p["final_norm/scale"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = p["lm_head/kernel"].T
    for i in range(c.num_layers):
        src, dst = f"block_{i}/", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = p[src + "attn_norm/scale"]
        out[dst + "post_attention_layernorm.weight"] = p[src + "mlp_norm/scale"]
        out[dst + "self_attn.q_proj.weight"] = p[src + "attn/query"].reshape(d, h * hd).T
        out[dst + "self_attn.k_proj.weight"] = p[src + "attn/key"].reshape(d, kvh * hd).T
        out[dst + "self_attn.v_proj.weight"] = p[src + "attn/value"].reshape(d, kvh * hd).T
        out[dst + "self_attn.o_proj.weight"] = p[src + "attn/out"].reshape(h * hd, d).T
        out[dst + "mlp.gate_proj.weight"] = p[src + "mlp/wi_gate/kernel"].T
        out[dst + "mlp.up_proj.weight"] = p[src + "mlp/wi_up/kernel"].T
        out[dst + "mlp.down_proj.weight"] = p[src + "mlp/wo/kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
