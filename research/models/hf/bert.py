"""BERT <-> EncoderModel: post-LayerNorm, learned + token-type positions, exact-GELU MLP with biases,
pooler, masked-LM head (dense + GELU + LayerNorm, decoder tied to the word embeddings, plus a bias),
and the sequence-classification head when the checkpoint has one.

Reads BertModel / BertForPreTraining / BertForMaskedLM / BertForSequenceClassification
state dicts (with or without the "bert." prefix); heads a checkpoint lacks get a fresh init.
"""

import numpy as np

from research.models.encoder import EncoderConfig, EncoderModel, init_params
from research.models.hf.common import Tensors, require

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.",)
IGNORE = (
    r"embeddings\.position_ids",  # a buffer
    r"cls\.predictions\.decoder\.(weight|bias)",  # tied copies of the word embeddings and cls.predictions.bias
    r"cls\.seq_relationship\.(weight|bias)",  # next-sentence prediction: not a head we have
)
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}

build = EncoderModel
init = init_params


def config_from_hf(cfg: dict, **overrides) -> EncoderConfig:
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"BERT hidden_act={act!r} is not supported; known {sorted(_ACTIVATIONS)}")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"BERT position_embedding_type={cfg['position_embedding_type']!r}: only 'absolute'")
    heads = cfg["num_attention_heads"]
    labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
    return EncoderConfig(
        **{
            **dict(
                vocab_size=cfg["vocab_size"],
                num_layers=cfg["num_hidden_layers"],
                d_model=cfg["hidden_size"],
                num_heads=heads,
                num_kv_heads=heads,
                mlp_dim=cfg["intermediate_size"],
                ffn=_ACTIVATIONS[act],
                norm="layernorm",
                norm_eps=cfg.get("layer_norm_eps", 1e-12),
                position="learned",
                max_len=cfg["max_position_embeddings"],
                tie_embeddings=cfg.get("tie_word_embeddings", True),
                scale_tied_logits=False,
                use_bias=True,
                type_vocab_size=cfg.get("type_vocab_size", 2),
                post_norm=True,
                num_labels=labels,
                pad_id=cfg.get("pad_token_id") or 0,
            ),
            **overrides,
        }
    )


def check(c: EncoderConfig) -> None:
    for field, allowed in (
        ("position", ("learned",)),
        ("norm", ("layernorm",)),
        ("ffn", ("gelu", "gelu_exact", "relu")),
        ("tie_embeddings", (True,)),
        ("scale_tied_logits", (False,)),
        ("use_bias", (True,)),
        ("post_norm", (True,)),
    ):
        require(c, field, allowed, "BERT")
    if c.num_kv_heads != c.num_heads or c.type_vocab_size < 1:
        raise ValueError("BERT needs model.num_kv_heads == num_heads and type_vocab_size >= 1")


def hf_config(c: EncoderConfig) -> dict:
    act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[c.ffn]
    return dict(
        model_type="bert",
        architectures=["BertForPreTraining"],
        vocab_size=c.vocab_size,
        num_hidden_layers=c.num_layers,
        hidden_size=c.d_model,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        hidden_act=act,
        layer_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_len,
        type_vocab_size=c.type_vocab_size,
        pad_token_id=c.pad_id,
        id2label={str(i): f"LABEL_{i}" for i in range(c.num_labels)},
        label2id={f"LABEL_{i}": i for i in range(c.num_labels)},
    )


def _dense_in(t: Tensors, name: str, n_in: int, n_out: int):
    """nn.Linear [out, in] + bias -> our Dense kernel [in, out] and bias."""
    return t.take(name + ".weight", (n_out, n_in)).T, t.take(name + ".bias", (n_out,))


def import_tensors(t: Tensors, c: EncoderConfig) -> dict[str, np.ndarray]:
    d, h, hd, f = c.d_model, c.num_heads, c.head_dim, c.mlp_dim
    out = {
        "embed/embedding": t.take("embeddings.word_embeddings.weight", (c.vocab_size, d)),
        "type_embed/embedding": t.take("embeddings.token_type_embeddings.weight", (c.type_vocab_size, d)),
        "encoder/pos_embed/embedding": t.take("embeddings.position_embeddings.weight", (c.max_len, d)),
        "encoder/embed_norm/scale": t.take("embeddings.LayerNorm.weight", (d,)),
        "encoder/embed_norm/bias": t.take("embeddings.LayerNorm.bias", (d,)),
    }
    for i in range(c.num_layers):
        src, dst = f"encoder.layer.{i}.", f"encoder/block_{i}/"
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
            w, b = _dense_in(t, src + "attention.self." + theirs, d, d)
            out[dst + "attn/" + ours] = w.reshape(d, h, hd)  # [d, heads, head_dim]
            out[dst + "attn/" + ours + "_bias"] = b.reshape(h, hd)
        w, b = _dense_in(t, src + "attention.output.dense", d, d)
        out[dst + "attn/out"], out[dst + "attn/out_bias"] = w.reshape(h, hd, d), b  # [heads, head_dim, d]
        out[dst + "mlp/wi/kernel"], out[dst + "mlp/wi/bias"] = _dense_in(t, src + "intermediate.dense", d, f)
        out[dst + "mlp/wo/kernel"], out[dst + "mlp/wo/bias"] = _dense_in(t, src + "output.dense", f, d)
        for ours, theirs in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
            out[dst + ours + "/scale"] = t.take(src + theirs + ".weight", (d,))
            out[dst + ours + "/bias"] = t.take(src + theirs + ".bias", (d,))
    # Heads: optional (a BertModel checkpoint has no MLM head, few have a classifier).
    if "pooler.dense.weight" in t:
        out["pooler/kernel"], out["pooler/bias"] = _dense_in(t, "pooler.dense", d, d)
    if "cls.predictions.transform.dense.weight" in t:
        out["mlm_dense/kernel"], out["mlm_dense/bias"] = _dense_in(t, "cls.predictions.transform.dense", d, d)
        out["mlm_norm/scale"] = t.take("cls.predictions.transform.LayerNorm.weight", (d,))
        out["mlm_norm/bias"] = t.take("cls.predictions.transform.LayerNorm.bias", (d,))
        out["mlm_bias"] = t.take("cls.predictions.bias", (c.vocab_size,))
    if "classifier.weight" in t:
        out["classifier/kernel"], out["classifier/bias"] = _dense_in(t, "classifier", d, c.num_labels)
    t.check_all_used(IGNORE)
    return out


def export_tensors(p: dict[str, np.ndarray], c: EncoderConfig) -> dict[str, np.ndarray]:
    """BertForPreTraining names (+ classifier.*, which BertForSequenceClassification reads)."""
    check(c)
    d = c.d_model
    out = {
        "bert.embeddings.word_embeddings.weight": p["embed/embedding"],
        "bert.embeddings.token_type_embeddings.weight": p["type_embed/embedding"],
        "bert.embeddings.position_embeddings.weight": p["encoder/pos_embed/embedding"],
        "bert.embeddings.LayerNorm.weight": p["encoder/embed_norm/scale"],
        "bert.embeddings.LayerNorm.bias": p["encoder/embed_norm/bias"],
        "bert.pooler.dense.weight": p["pooler/kernel"].T,
        "bert.pooler.dense.bias": p["pooler/bias"],
        "cls.predictions.transform.dense.weight": p["mlm_dense/kernel"].T,
        "cls.predictions.transform.dense.bias": p["mlm_dense/bias"],
        "cls.predictions.transform.LayerNorm.weight": p["mlm_norm/scale"],
        "cls.predictions.transform.LayerNorm.bias": p["mlm_norm/bias"],
        "cls.predictions.bias": p["mlm_bias"],
        "classifier.weight": p["classifier/kernel"].T,
        "classifier.bias": p["classifier/bias"],
    }
    for i in range(c.num_layers):
        src, dst = f"encoder/block_{i}/", f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            out[dst + f"attention.self.{name}.weight"] = p[src + f"attn/{name}"].reshape(d, d).T
            out[dst + f"attention.self.{name}.bias"] = p[src + f"attn/{name}_bias"].reshape(d)
        out[dst + "attention.output.dense.weight"] = p[src + "attn/out"].reshape(d, d).T
        out[dst + "attention.output.dense.bias"] = p[src + "attn/out_bias"]
        out[dst + "intermediate.dense.weight"] = p[src + "mlp/wi/kernel"].T
        out[dst + "intermediate.dense.bias"] = p[src + "mlp/wi/bias"]
        out[dst + "output.dense.weight"] = p[src + "mlp/wo/kernel"].T
        out[dst + "output.dense.bias"] = p[src + "mlp/wo/bias"]
        for ours, theirs in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
            out[dst + theirs + ".weight"] = p[src + ours + "/scale"]
            out[dst + theirs + ".bias"] = p[src + ours + "/bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
