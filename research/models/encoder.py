"""Encoder-only Transformer (BERT family): bidirectional attention over a padding mask, and its heads.

The blocks are research.layers' Attention (causal=False) and MLP; `Stack` and
`Block` are shared with the encoder-decoder model (research/models/encoder_decoder.py),
which adds cross-attention. Heads on top of the encoder:
  mlm       masked-LM logits [b, len, vocab] (BERT's dense + act + norm transform, tied decoder + bias)
  pooled    BERT pooler: tanh(dense(h[CLS])) [b, d]
  classify  sequence-classification logits [b, num_labels] from the pooled [CLS]
  embed     sentence embeddings [b, d]: the [CLS] hidden state, or the mean over non-padding tokens
  hidden    the encoder output [b, len, d]
  scalar    one score per sequence [b] (a reward model), Dense(1) on the sentence embedding; its
            parameters exist only in models initialised with it ("all" leaves it out)
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.attention import cached_attention, get_attention
from research.layers import MLP, Attention, RelativePositionBias, make_norm, sinusoidal_embedding
from research.models.decoder import ACT, ModelConfig, scalar_head

HEADS = ("mlm", "pooled", "classify", "embed", "hidden", "scalar", "all")
_ALL = ("mlm", "pooled", "classify", "embed", "hidden")  # head="all": the heads Hugging Face checkpoints carry
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ModelConfig):
    """ModelConfig plus what only encoders have."""

    type_vocab_size: int = 0  # BERT's token-type (segment A/B) embeddings; 0: none
    post_norm: bool = False  # BERT: x = norm(x + f(x)) and normed embeddings; False: pre-norm + final norm
    num_labels: int = 2  # classification head
    pooling: str = "cls"  # sentence embeddings: cls | mean
    pad_id: int = 0  # tokens equal to it need a padding mask (segment_ids)
    relative_buckets: int = 32  # position="relative" (T5 bias)
    relative_max_distance: int = 128


def padding_segments(tokens, segment_ids, pad_id: int, field: str = "segment_ids"):
    """segment_ids, or all ones when absent. Refuses (when tokens are concrete) padding without a mask:
    a silent all-ones mask would let every token attend to the padding."""
    if segment_ids is not None:
        return segment_ids
    try:
        concrete = np.asarray(tokens)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None  # under jit the caller (the task's batches) owns this check
    if concrete is not None and (concrete == pad_id).any():
        raise ValueError(
            f"tokens hold the padding id {pad_id} but no {field} (padding mask) was given: "
            f"pass {field} with 0 at padding positions"
        )
    return jnp.ones(tokens.shape, jnp.int32)


_ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
    "swiglu": nn.silu,
    "geglu": nn.gelu,
}


def _dense(features, names, name, c, use_bias=True):
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, names[1:])
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=init,
        bias_init=bias_init,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        name=name,
    )


class CrossAttention(Attention):
    """Queries from the decoder, keys/values from the encoder output (`context`).

    In decode mode the first call (prefill) projects `context` once and caches the
    keys/values; later steps pass context=None and read the cache, so the encoder
    output is neither recomputed nor re-projected per generated token.
    """

    use_rope: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, x, context, segment_ids=None, context_segment_ids=None, *, decode: bool = False):
        """x: [b, q, d]; context: [b, kv, d] or None (decode steps); segment ids: [b, q], [b, kv] int."""
        d_model, hd = x.shape[-1], self.head_dim
        proj = "bld,dhk->blhk"
        q = self._einsum(proj, x, (d_model, self.num_heads, hd), ("embed", "heads", "head_dim"), "query", 0)
        if segment_ids is None:
            segment_ids = jnp.ones(x.shape[:2], jnp.int32)
        if context is not None:
            kv_shape, kv_names = (d_model, self.num_kv_heads, hd), ("embed", "kv_heads", "head_dim")
            k = self._einsum(proj, context, kv_shape, kv_names, "key", 0)  # [b, kv, kvh, hd]
            v = self._einsum(proj, context, kv_shape, kv_names, "value", 0)
            if context_segment_ids is None:
                context_segment_ids = jnp.ones(context.shape[:2], jnp.int32)
        if decode:
            if context is not None:
                k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads-major: [b, kvh, kv, hd]
                self.variable("cache", "cross_key", lambda: k).value = k
                self.variable("cache", "cross_value", lambda: v).value = v
                self.variable("cache", "cross_segment_ids", lambda: context_segment_ids).value = context_segment_ids
            elif not self.has_variable("cache", "cross_key"):
                raise ValueError("cross-attention decode step without context: run the prefill with the encoder output")
            k, v = self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
            kv_seg = self.get_variable("cache", "cross_segment_ids")
            mask = (segment_ids[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)  # [b, q, kv]
            out = cached_attention(q, k, v, mask[:, None])
        else:
            if context is None:
                raise ValueError("cross-attention needs the encoder output (context) outside decode mode")
            attend = get_attention(self.attention, dict(self.attention_options))
            out = attend(q, k, v, causal=False, segment_ids=(segment_ids, context_segment_ids))
        return self._einsum(
            "blhk,hkd->bld", out, (self.num_heads, hd, d_model), ("heads", "head_dim", "embed"), "out", (0, 1)
        )


class Block(nn.Module):
    """Self-attention, optional cross-attention, MLP; each sublayer pre-norm (x + f(norm(x))) or
    post-norm (norm(x + f(x)), BERT)."""

    config: ModelConfig
    causal: bool = False
    cross: bool = False
    post_norm: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids, *, bias=None, context=None, context_segment_ids=None, decode=False):
        c = self.config
        norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        heads = dict(
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            attention=c.attention,
            attention_options=c.attention_options,
            use_bias=c.use_bias,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
        )

        def residual(x, name, fn):
            if self.post_norm:
                return nn.with_logical_constraint(make_norm(c.norm, name=name, **norm)(x + fn(x)), ACT)
            return nn.with_logical_constraint(x + fn(make_norm(c.norm, name=name, **norm)(x)), ACT)

        attn = Attention(
            **heads, use_rope=c.position == "rope", rope_theta=c.rope_theta, causal=self.causal, name="attn"
        )
        x = residual(x, "attn_norm", lambda h: attn(h, positions, segment_ids, decode=decode, bias=bias))
        if self.cross:
            cross = CrossAttention(**heads, name="cross_attn")
            x = residual(x, "cross_norm", lambda h: cross(h, context, segment_ids, context_segment_ids, decode=decode))
        mlp = dict(kind=c.ffn, use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        return residual(x, "mlp_norm", MLP(c.d_model, c.mlp_dim, **mlp, name="mlp"))


class Stack(nn.Module):
    """Embedded tokens -> positions -> `num_layers` blocks -> final norm (pre-norm) [b, len, d].

    Learned/sinusoidal positions are added here; "relative" builds one T5 bias
    table shared by every layer of the stack; "rope" lives inside Attention.
    """

    config: ModelConfig
    num_layers: int
    causal: bool = False
    cross: bool = False
    post_norm: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids, *, context=None, context_segment_ids=None, decode=False):
        c = self.config
        if c.position == "learned":
            init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed"))
            pos = nn.Embed(
                c.max_len, c.d_model, embedding_init=init, dtype=c.dtype, param_dtype=c.param_dtype, name="pos_embed"
            )
            x = x + pos(positions)
        elif c.position == "sinusoidal":
            x = x + sinusoidal_embedding(positions, c.d_model).astype(x.dtype)
        if self.post_norm:
            x = make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name="embed_norm")(x)
        x = nn.with_logical_constraint(x, ACT)
        bias = None
        if c.position == "relative":
            rel = RelativePositionBias(
                c.num_heads,
                c.relative_buckets,
                c.relative_max_distance,
                bidirectional=not self.causal,
                param_dtype=c.param_dtype,
                name="rel_bias",
            )
            if decode:
                # Keys are the cache slots 0..cache_len-1 (decoder inputs start at slot 0, unpadded);
                # the cache length is known from the first (shape-only) pass.
                slots = self.variable("cache", "slots", lambda: jnp.zeros(x.shape[1], jnp.int32))
                keys = jnp.arange(slots.value.shape[0])[None]
            else:
                keys = positions
            bias = rel(positions, keys)  # [b, heads, q, k]
        for i in range(self.num_layers):
            x = Block(c, causal=self.causal, cross=self.cross, post_norm=self.post_norm, name=f"block_{i}")(
                x,
                positions,
                segment_ids,
                bias=bias,
                context=context,
                context_segment_ids=context_segment_ids,
                decode=decode,
            )
        if not self.post_norm:
            x = make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name="final_norm")(x)
        return x


def check_config(c, allowed_positions=("learned", "sinusoidal", "rope", "relative")) -> None:
    if c.position not in allowed_positions:
        raise ValueError(f"model.position={c.position!r}; choose one of {allowed_positions}")
    if getattr(c, "pooling", "cls") not in POOLINGS:
        raise ValueError(f"model.pooling={c.pooling!r}; choose one of {POOLINGS}")


class EncoderModel(nn.Module):
    config: EncoderConfig

    @nn.compact
    def __call__(self, tokens, *, segment_ids=None, positions=None, token_types=None, head: str = "mlm"):
        """tokens: [b, len] int; segment_ids: [b, len], 0 = padding (packed rows: one id per document);
        positions: [b, len] (default 0..len-1); token_types: [b, len] BERT segment A/B ids (default 0).

        Returns the `head` output (see the module docstring), float32; head="all" returns a dict of all.
        """
        c = self.config
        if head not in HEADS:
            raise ValueError(f"head={head!r}; choose one of {HEADS}")
        check_config(c)
        segment_ids = padding_segments(tokens, segment_ids, c.pad_id)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        embed = nn.Embed(
            c.vocab_size, c.d_model, embedding_init=embed_init, dtype=c.dtype, param_dtype=c.param_dtype, name="embed"
        )
        x = embed(tokens)  # [b, len, d]
        if c.type_vocab_size:
            if token_types is None:
                token_types = jnp.zeros_like(tokens)
            init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed"))
            x = x + nn.Embed(
                c.type_vocab_size,
                c.d_model,
                embedding_init=init,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="type_embed",
            )(token_types)
        x = Stack(c, c.num_layers, causal=False, post_norm=c.post_norm, name="encoder")(x, positions, segment_ids)
        out = {"hidden": x}
        want = _ALL if head == "all" else (head,)
        if {"pooled", "classify"} & set(want):
            out["pooled"] = jnp.tanh(_dense(c.d_model, ("embed", None), "pooler", c)(x[:, 0]))  # [CLS]
        if "classify" in want:
            out["classify"] = _dense(c.num_labels, ("embed", None), "classifier", c)(out["pooled"])
        if {"embed", "scalar"} & set(want):
            if c.pooling == "cls":
                out["embed"] = x[:, 0]
            else:
                keep = (segment_ids != 0)[..., None].astype(x.dtype)  # [b, len, 1]
                out["embed"] = (x * keep).sum(1) / jnp.maximum(keep.sum(1), 1)
        if "scalar" in want:
            out["scalar"] = scalar_head(c, out["embed"])
        if "mlm" in want:
            h = _ACTIVATIONS[c.ffn](_dense(c.d_model, ("embed", None), "mlm_dense", c)(x))
            h = make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name="mlm_norm")(h)
            if c.tie_embeddings:
                logits = embed.attend(h)
                if c.scale_tied_logits:
                    logits = logits * (c.d_model**-0.5)
            else:
                logits = _dense(c.vocab_size, ("embed", "vocab"), "mlm_head", c, use_bias=False)(h)
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",))
            logits = logits + self.param("mlm_bias", bias_init, (c.vocab_size,), c.param_dtype).astype(logits.dtype)
            out["mlm"] = nn.with_logical_constraint(
                logits, ("activation_batch", "activation_length", "activation_vocab")
            )
        out = {k: v.astype(jnp.float32) for k, v in out.items()}
        return out if head == "all" else out[head]


def init_params(model: EncoderModel, rng: jax.Array, batch: int = 1):
    """Boxed (logically partitioned) parameters of every head; call under jax.eval_shape for shapes only."""
    tokens = jnp.zeros((batch, min(8, model.config.max_len)), jnp.int32)
    return model.init(rng, tokens, segment_ids=jnp.ones_like(tokens), head="all")["params"]
