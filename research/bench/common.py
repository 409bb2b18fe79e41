"""Shared flags and model construction for the benchmarks.

Both benchmarks build a GPT-2-shaped model (GELU MLP of 4*d, LayerNorm,
learned positions, tied embeddings) so the Hugging Face GPT-2 peer computes
the same function at the same size.
"""

import json

from absl import flags

from research.models import DecoderLM, ModelConfig

flags.DEFINE_integer("layers", 6, "Transformer blocks.")
flags.DEFINE_integer("d_model", 384, "Model width.")
flags.DEFINE_integer("heads", 6, "Attention heads.")
flags.DEFINE_integer("vocab", 4096, "Vocabulary size.")
flags.DEFINE_string("dtype", "float32", "Activation dtype (params stay float32).")
flags.DEFINE_string("attention", "dense", "Attention implementation (registry name).")
flags.DEFINE_bool("peer", True, "Also time Hugging Face's PyTorch GPT-2 (needs the `peers` extra).")


def gpt2_like_model(max_len: int) -> DecoderLM:
    f = flags.FLAGS
    return DecoderLM(
        ModelConfig(
            vocab_size=f.vocab,
            num_layers=f.layers,
            d_model=f.d_model,
            num_heads=f.heads,
            num_kv_heads=f.heads,
            mlp_dim=4 * f.d_model,
            ffn="gelu",
            norm="layernorm",
            norm_eps=1e-5,
            position="learned",
            max_len=max_len,
            tie_embeddings=True,
            attention=f.attention,
            dtype=f.dtype,
        )
    )


def peer_or_none(fn, **kwargs):
    """The peer's number, or None with a note when torch/transformers aren't installed."""
    from research.bench import hf_peer

    if not flags.FLAGS.peer:
        return None
    if not hf_peer.peer_available():
        print("peer skipped: install the `peers` extra (pip install -e .[peers]) for the Hugging Face comparison")
        return None
    return fn(**kwargs)


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).rjust(widths[k]) for k in keys))


def _fmt(v):
    return f"{v:,.1f}" if isinstance(v, float) else str(v)


def print_json(record: dict) -> None:
    print(json.dumps(record))
