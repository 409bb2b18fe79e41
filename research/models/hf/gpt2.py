"""GPT-2 <-> DecoderLM: learned positions, pre-LayerNorm with biases, tanh-GELU MLP, fused qkv, tied head.

GPT-2 stores its projections as Conv1D weights, [in, out] (the transpose of
nn.Linear), and q, k, v fused along the output axis: [d, 3d].
"""

import numpy as np

from research.models.decoder import DecoderLM, ModelConfig, init_params
from research.models.hf.common import Tensors, require

MODEL_TYPES = ("gpt2",)
PREFIXES = ("transformer.",)
# Causal-mask buffers older GPT-2 files carry, and the tied copy of the embedding.
IGNORE = (r"h\.\d+\.attn\.(masked_)?bias", "lm_head.weight")
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu"}

build = DecoderLM
init = init_params


def config_from_hf(cfg: dict, **overrides) -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function={act!r} is not supported; known {sorted(_ACTIVATIONS)}")
    if cfg.get("scale_attn_by_inverse_layer_idx") or not cfg.get("scale_attn_weights", True):
        raise ValueError("GPT-2 checkpoints with scale_attn_by_inverse_layer_idx or without scale_attn_weights differ")
    d = cfg["n_embd"]
    return ModelConfig(
        **{
            **dict(
                vocab_size=cfg["vocab_size"],
                num_layers=cfg["n_layer"],
                d_model=d,
                num_heads=cfg["n_head"],
                num_kv_heads=cfg["n_head"],
                mlp_dim=cfg.get("n_inner") or 4 * d,
                ffn=_ACTIVATIONS[act],
                norm="layernorm",
                norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                position="learned",
                max_len=cfg["n_positions"],
                tie_embeddings=True,
                scale_tied_logits=False,
                use_bias=True,
            ),
            **overrides,
        }
    )


def check(c: ModelConfig) -> None:
    for field, allowed in (
        ("position", ("learned",)),
        ("norm", ("layernorm",)),
        ("ffn", ("gelu", "gelu_exact", "relu")),
        ("tie_embeddings", (True,)),
        ("scale_tied_logits", (False,)),
        ("use_bias", (True,)),
    ):
        require(c, field, allowed, "GPT-2")
    if getattr(c, "moe_num_experts", 0):
        raise ValueError("model.moe_num_experts > 0 cannot be written as a GPT-2 checkpoint")
    if c.num_kv_heads != c.num_heads:
        raise ValueError(f"model.num_kv_heads={c.num_kv_heads} must equal num_heads={c.num_heads} for GPT-2")


def hf_config(c: ModelConfig) -> dict:
    act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[c.ffn]
    return dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=c.vocab_size,
        n_layer=c.num_layers,
        n_embd=c.d_model,
        n_head=c.num_heads,
        n_inner=c.mlp_dim,
        n_positions=c.max_len,
        activation_function=act,
        layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def import_tensors(t: Tensors, c: ModelConfig) -> dict[str, np.ndarray]:
    d, h, hd, f = c.d_model, c.num_heads, c.head_dim, c.mlp_dim
    out = {
        "embed/embedding": t.take("wte.weight", (c.vocab_size, d)),
        "pos_embed/embedding": t.take("wpe.weight", (c.max_len, d)),
        "final_norm/scale": t.take("ln_f.weight", (d,)),
        "final_norm/bias": t.take("ln_f.bias", (d,)),
    }
    for i in range(c.num_layers):
        src, dst = f"h.{i}.", f"block_{i}/"
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[dst + ours + "/scale"] = t.take(src + theirs + ".weight", (d,))
            out[dst + ours + "/bias"] = t.take(src + theirs + ".bias", (d,))
        qkv = t.take(src + "attn.c_attn.weight", (d, 3 * d))
        qkv_bias = t.take(src + "attn.c_attn.bias", (3 * d,))
        for j, name in enumerate(("query", "key", "value")):
            out[dst + f"attn/{name}"] = qkv[:, j * d : (j + 1) * d].reshape(d, h, hd)  # [d, heads, head_dim]
            out[dst + f"attn/{name}_bias"] = qkv_bias[j * d : (j + 1) * d].reshape(h, hd)
        out[dst + "attn/out"] = t.take(src + "attn.c_proj.weight", (d, d)).reshape(h, hd, d)  # [heads, hd, d]
        out[dst + "attn/out_bias"] = t.take(src + "attn.c_proj.bias", (d,))
        out[dst + "mlp/wi/kernel"] = t.take(src + "mlp.c_fc.weight", (d, f))
        out[dst + "mlp/wi/bias"] = t.take(src + "mlp.c_fc.bias", (f,))
        out[dst + "mlp/wo/kernel"] = t.take(src + "mlp.c_proj.weight", (f, d))
        out[dst + "mlp/wo/bias"] = t.take(src + "mlp.c_proj.bias", (d,))
    t.check_all_used(IGNORE)
    return out


def export_tensors(p: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    check(c)
    d = c.d_model
    out = {
        "transformer.wte.weight": p["embed/embedding"],
        "transformer.wpe.weight": p["pos_embed/embedding"],
        "transformer.ln_f.weight": p["final_norm/scale"],
        "transformer.ln_f.bias": p["final_norm/bias"],
    }
    for i in range(c.num_layers):
        src, dst = f"block_{i}/", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[dst + theirs + ".weight"] = p[src + ours + "/scale"]
            out[dst + theirs + ".bias"] = p[src + ours + "/bias"]
        names = ("query", "key", "value")
        out[dst + "attn.c_attn.weight"] = np.concatenate([p[src + f"attn/{n}"].reshape(d, d) for n in names], axis=1)
        out[dst + "attn.c_attn.bias"] = np.concatenate([p[src + f"attn/{n}_bias"].reshape(d) for n in names])
        out[dst + "attn.c_proj.weight"] = p[src + "attn/out"].reshape(d, d)
        out[dst + "attn.c_proj.bias"] = p[src + "attn/out_bias"]
        out[dst + "mlp.c_fc.weight"] = p[src + "mlp/wi/kernel"]
        out[dst + "mlp.c_fc.bias"] = p[src + "mlp/wi/bias"]
        out[dst + "mlp.c_proj.weight"] = p[src + "mlp/wo/kernel"]
        out[dst + "mlp.c_proj.bias"] = p[src + "mlp/wo/bias"]
    return out
