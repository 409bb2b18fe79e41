"""T5 <-> EncoderDecoder: RMSNorm without mean or bias, relative position bias (one table per stack,
stored in its first layer), no biases anywhere, ReLU or gated-GELU MLP, tied embedding with the
decoder output scaled by d_model**-0.5.

T5 does not divide attention logits by sqrt(head_dim); our attention does, so
the import multiplies each query kernel by sqrt(head_dim) (and the export divides
it back): the same function, with no T5-only switch in the attention code.
"""

import math

import numpy as np

from research.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, init_params
from research.models.hf.common import Tensors, require

MODEL_TYPES = ("t5",)
PREFIXES = ()
IGNORE = (r"(encoder|decoder)\.embed_tokens\.weight",)  # copies of shared.weight
_FFN = {"relu": "relu", "gated-gelu": "geglu"}

build = EncoderDecoder
init = init_params


def config_from_hf(cfg: dict, **overrides) -> EncoderDecoderConfig:
    ffn = cfg.get("feed_forward_proj", "relu")
    if ffn not in _FFN:
        raise ValueError(f"T5 feed_forward_proj={ffn!r} is not supported; known {sorted(_FFN)}")
    d, heads = cfg["d_model"], cfg["num_heads"]
    if cfg.get("d_kv", d // heads) * heads != d:
        raise ValueError(f"T5 d_kv={cfg['d_kv']} * num_heads={heads} must equal d_model={d} (our head_dim is d/heads)")
    tied = cfg.get("tie_word_embeddings", True)
    scale = cfg.get("scale_decoder_outputs", tied)
    if scale and not tied:
        raise ValueError("T5 with an untied head and scaled decoder outputs is not supported")
    pad = cfg.get("pad_token_id", 0) or 0
    start = cfg.get("decoder_start_token_id")
    return EncoderDecoderConfig(
        **{
            **dict(
                vocab_size=cfg["vocab_size"],
                num_layers=cfg["num_layers"],
                num_decoder_layers=cfg.get("num_decoder_layers") or cfg["num_layers"],
                d_model=d,
                num_heads=heads,
                num_kv_heads=heads,
                mlp_dim=cfg["d_ff"],
                ffn=_FFN[ffn],
                norm="rmsnorm",
                norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
                position="relative",
                relative_buckets=cfg.get("relative_attention_num_buckets", 32),
                relative_max_distance=cfg.get("relative_attention_max_distance", 128),
                max_len=512,  # relative positions have no table; this only bounds generation
                tie_embeddings=tied,
                scale_tied_logits=bool(scale),
                use_bias=False,
                pad_id=pad,
                decoder_start_id=pad if start is None else start,
            ),
            **overrides,
        }
    )


def check(c: EncoderDecoderConfig) -> None:
    for field, allowed in (
        ("position", ("relative",)),
        ("norm", ("rmsnorm",)),
        ("ffn", tuple(_FFN.values())),
        ("use_bias", (False,)),
    ):
        require(c, field, allowed, "T5")
    if c.num_kv_heads != c.num_heads:
        raise ValueError(f"model.num_kv_heads={c.num_kv_heads} must equal num_heads={c.num_heads} for T5")


def hf_config(c: EncoderDecoderConfig) -> dict:
    ffn = {v: k for k, v in _FFN.items()}[c.ffn]
    return dict(
        model_type="t5",
        architectures=["T5ForConditionalGeneration"],
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.head_dim,
        d_ff=c.mlp_dim,
        num_layers=c.num_layers,
        num_decoder_layers=c.decoder_layers,
        num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_buckets,
        relative_attention_max_distance=c.relative_max_distance,
        layer_norm_epsilon=c.norm_eps,
        feed_forward_proj=ffn,
        tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_id,
        decoder_start_token_id=c.decoder_start_id,
        eos_token_id=1,
        is_encoder_decoder=True,
    )


def _attention(t: Tensors, src: str, dst: str, c, out: dict) -> None:
    d, h, hd = c.d_model, c.num_heads, c.head_dim
    # nn.Linear [out, in] -> ours [d, heads, head_dim]; sqrt(hd) undoes our 1/sqrt(hd) (T5 has none).
    out[dst + "query"] = t.take(src + "q.weight", (d, d)).T.reshape(d, h, hd) * math.sqrt(hd)
    out[dst + "key"] = t.take(src + "k.weight", (d, d)).T.reshape(d, h, hd)
    out[dst + "value"] = t.take(src + "v.weight", (d, d)).T.reshape(d, h, hd)
    out[dst + "out"] = t.take(src + "o.weight", (d, d)).T.reshape(h, hd, d)  # [heads, head_dim, d]


def _mlp(t: Tensors, src: str, dst: str, c, out: dict) -> None:
    d, f = c.d_model, c.mlp_dim
    if c.ffn == "geglu":
        out[dst + "wi_gate/kernel"] = t.take(src + "wi_0.weight", (f, d)).T
        out[dst + "wi_up/kernel"] = t.take(src + "wi_1.weight", (f, d)).T
    else:
        out[dst + "wi/kernel"] = t.take(src + "wi.weight", (f, d)).T
    out[dst + "wo/kernel"] = t.take(src + "wo.weight", (d, f)).T


def import_tensors(t: Tensors, c: EncoderDecoderConfig) -> dict[str, np.ndarray]:
    d = c.d_model
    out = {"embed/embedding": t.take("shared.weight", (c.vocab_size, d))}
    if not c.tie_embeddings:
        out["lm_head/kernel"] = t.take("lm_head.weight", (c.vocab_size, d)).T
    elif "lm_head.weight" in t:
        t.take("lm_head.weight", (c.vocab_size, d))  # the tied copy
    for stack, n, sub in (("encoder", c.num_layers, ("attn", "mlp")), ("decoder", c.decoder_layers, None)):
        sub = sub or ("attn", "cross", "mlp")
        out[f"{stack}/rel_bias/embedding"] = t.take(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (c.relative_buckets, c.num_heads)
        )
        out[f"{stack}/final_norm/scale"] = t.take(f"{stack}.final_layer_norm.weight", (d,))
        for i in range(n):
            src, dst = f"{stack}.block.{i}.layer.", f"{stack}/block_{i}/"
            for j, part in enumerate(sub):
                name = {"attn": "SelfAttention", "cross": "EncDecAttention", "mlp": "DenseReluDense"}[part]
                norm = {"attn": "attn_norm", "cross": "cross_norm", "mlp": "mlp_norm"}[part]
                out[dst + norm + "/scale"] = t.take(f"{src}{j}.layer_norm.weight", (d,))
                if part == "mlp":
                    _mlp(t, f"{src}{j}.{name}.", dst + "mlp/", c, out)
                else:
                    _attention(t, f"{src}{j}.{name}.", dst + ("attn/" if part == "attn" else "cross_attn/"), c, out)
    t.check_all_used(IGNORE)
    return out


def export_tensors(p: dict[str, np.ndarray], c: EncoderDecoderConfig) -> dict[str, np.ndarray]:
    check(c)
    d, hd = c.d_model, c.head_dim
    out = {"shared.weight": p["embed/embedding"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = p["lm_head/kernel"].T
    for stack, n, sub in (("encoder", c.num_layers, ("attn", "mlp")), ("decoder", c.decoder_layers, None)):
        sub = sub or ("attn", "cross", "mlp")
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = p[f"{stack}/rel_bias/embedding"]
        out[f"{stack}.final_layer_norm.weight"] = p[f"{stack}/final_norm/scale"]
        for i in range(n):
            src, dst = f"{stack}/block_{i}/", f"{stack}.block.{i}.layer."
            for j, part in enumerate(sub):
                norm = {"attn": "attn_norm", "cross": "cross_norm", "mlp": "mlp_norm"}[part]
                out[f"{dst}{j}.layer_norm.weight"] = p[src + norm + "/scale"]
                if part == "mlp":
                    m, theirs = src + "mlp/", f"{dst}{j}.DenseReluDense."
                    if c.ffn == "geglu":
                        out[theirs + "wi_0.weight"] = p[m + "wi_gate/kernel"].T
                        out[theirs + "wi_1.weight"] = p[m + "wi_up/kernel"].T
                    else:
                        out[theirs + "wi.weight"] = p[m + "wi/kernel"].T
                    out[theirs + "wo.weight"] = p[m + "wo/kernel"].T
                else:
                    a = src + ("attn/" if part == "attn" else "cross_attn/")
                    theirs = f"{dst}{j}.{'SelfAttention' if part == 'attn' else 'EncDecAttention'}."
                    out[theirs + "q.weight"] = (p[a + "query"] / math.sqrt(hd)).reshape(d, d).T
                    out[theirs + "k.weight"] = p[a + "key"].reshape(d, d).T
                    out[theirs + "v.weight"] = p[a + "value"].reshape(d, d).T
                    out[theirs + "o.weight"] = p[a + "out"].reshape(d, d).T
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
