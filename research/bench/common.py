"""Shared flags and model construction for the benchmarks.

Both benchmarks build a GPT-2-shaped model (GELU MLP of 4*d, LayerNorm,
learned positions, tied embeddings) so the Hugging Face GPT-2 peer computes
the same function at the same size.
"""

import inspect
import json

import numpy as np
from absl import flags

from research.attention import attention_options, get_attention, list_attention
from research.attention.sparse import check_attention_options
from research.models import DecoderLM, ModelConfig

flags.DEFINE_integer("layers", 6, "Transformer blocks.")
flags.DEFINE_integer("d_model", 384, "Model width.")
flags.DEFINE_integer("heads", 6, "Attention heads.")
flags.DEFINE_integer("vocab", 4096, "Vocabulary size.")
flags.DEFINE_string("dtype", "float32", "Activation dtype (params stay float32).")
flags.DEFINE_string("attention", "dense", "Attention implementation (registry name).")
flags.DEFINE_bool("peer", True, "Also time Hugging Face's PyTorch GPT-2 (needs the `peers` extra).")


DTYPES = ("float32", "bfloat16", "float16")


def check_shape(
    *,
    layers: int,
    d_model: int,
    heads: int,
    vocab: int,
    seq_len: int | None = None,
    attention: str = "dense",
    dtype: str = "float32",
    seq_flag: str = "--seq",
    attention_opts: dict | None = None,
) -> None:
    """Raises ValueError naming the benchmark flag when a shape can't be built or run.

    seq_len: the length the attention variant runs at (None: not checked, e.g. generation,
    whose cached decoding has no blocks); seq_flag names it in the message.
    attention_opts: the variant's options (default: its own defaults, as the benchmarks run it).
    """
    for name, value in (("--layers", layers), ("--d_model", d_model), ("--heads", heads), ("--vocab", vocab)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if d_model % heads:
        raise ValueError(f"--heads={heads} must divide --d_model={d_model} (head dim = d_model / heads)")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}; choose one of {list(DTYPES)}")
    if attention not in list_attention():
        raise ValueError(f"--attention={attention!r} is not a registered attention; choose one of {list_attention()}")
    if seq_len is None:
        return
    if seq_len < 1:
        raise ValueError(f"{seq_flag}={seq_len} must be >= 1")
    opts = variant_defaults(attention) if attention_opts is None else dict(attention_opts)
    try:
        check_attention_options(attention, opts, seq_len)
    except ValueError:
        blocks = {k: v for k, v in opts.items() if isinstance(v, int) and not isinstance(v, bool)}
        raise ValueError(
            f"{seq_flag}={seq_len} does not split into the blocks of --attention={attention!r} ({blocks}): "
            f"use a multiple of them (or a length at most the block)"
        ) from None


def variant_defaults(name: str) -> dict:
    """{option: default} of attention variant `name` (the values a model without attention_options runs)."""
    fn = get_attention(name)
    params = inspect.signature(fn).parameters
    return {k: params[k].default for k in attention_options(name) if k in params}


def check_shape_flags(seq_len: int | None = None, seq_flag: str = "--seq") -> None:
    """`check_shape` on the shared shape flags (--layers, --d_model, --heads, --vocab, --attention, --dtype)."""
    f = flags.FLAGS
    check_shape(
        layers=f.layers,
        d_model=f.d_model,
        heads=f.heads,
        vocab=f.vocab,
        seq_len=seq_len,
        attention=f.attention,
        dtype=f.dtype,
        seq_flag=seq_flag,
    )


def gpt2_like_config(
    *,
    layers: int,
    d_model: int,
    heads: int,
    vocab: int,
    max_len: int,
    attention: str = "dense",
    dtype: str = "float32",
    attention_options: tuple = (),
) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        num_layers=layers,
        d_model=d_model,
        num_heads=heads,
        num_kv_heads=heads,
        mlp_dim=4 * d_model,
        ffn="gelu",
        norm="layernorm",
        norm_eps=1e-5,
        position="learned",
        max_len=max_len,
        tie_embeddings=True,
        attention=attention,
        attention_options=attention_options,
        dtype=dtype,
    )


def gpt2_like_model(max_len: int, **overrides) -> DecoderLM:
    """The model of the shape flags; keyword overrides (layers=, d_model=, ...) replace single flags.

    A flag is read only where no override is given, so callers passing every size need no parsed flags.
    """
    keys = ("layers", "d_model", "heads", "vocab", "attention", "dtype")
    shape = {k: overrides[k] if k in overrides else getattr(flags.FLAGS, k) for k in keys}
    return DecoderLM(gpt2_like_config(**{**overrides, **shape}, max_len=max_len))


def fit_slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) vs log(size)."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


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
