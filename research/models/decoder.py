"""Decoder-only Transformer language model (GPT / LLaMA family) in Flax Linen."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import MLP, Attention, make_norm, sinusoidal_embedding
from research.layers.moe import MoE

ACT = ("activation_batch", "activation_length", "activation_embed")
# What DecoderLM returns: next-token logits, the final (normed) hidden states, or a scalar per position
# from a Dense(1) head on them (a reward model's score, a PPO value head).
HEADS = ("logits", "hidden", "scalar")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that determines the function and the parameter shapes."""

    vocab_size: int
    num_layers: int = 6
    d_model: int = 384
    num_heads: int = 6
    num_kv_heads: int = 6
    mlp_dim: int = 1536
    ffn: str = "gelu"  # gelu | gelu_exact | relu | swiglu | geglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-6
    position: str = "rope"  # learned | sinusoidal | rope
    rope_theta: float = 10_000.0
    max_len: int = 256  # longest sequence (training rows, or prompt + generated tokens)
    tie_embeddings: bool = True
    scale_tied_logits: bool = True  # tied logits times d_model**-0.5 (ours, T5); False: GPT-2
    use_bias: bool = False  # biases in attention projections and MLP (GPT-2, BERT)
    attention: str = "dense"  # a name in research.attention's registry
    attention_options: tuple = ()  # ((name, value), ...): config.model.attention_options, sorted
    moe_num_experts: int = 0  # 0: dense FFN in every block (research.layers.moe)
    moe_top_k: int = 2
    moe_every: int = 2  # block i is MoE when (i + 1) % moe_every == 0
    moe_mlp_dim: int = -1  # each expert's hidden width; -1: mlp_dim
    moe_capacity_factor: float = 1.25
    moe_dropless: bool = False
    moe_renormalize: bool = True
    moe_aux_weight: float = 0.01
    moe_z_weight: float = 1e-3
    dtype: str = "float32"  # activations and matmuls
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    config: ModelConfig
    index: int = 0  # position in the stack: decides whether the FFN is a Mixture of Experts

    def is_moe(self) -> bool:
        c = self.config
        return c.moe_num_experts > 0 and (self.index + 1) % c.moe_every == 0

    @nn.compact
    def __call__(self, x, positions, segment_ids, decode: bool = False):
        c = self.config
        norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        h = make_norm(c.norm, name="attn_norm", **norm)(x)
        h = Attention(
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            attention=c.attention,
            attention_options=c.attention_options,
            use_rope=c.position == "rope",
            rope_theta=c.rope_theta,
            use_bias=c.use_bias,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name="attn",
        )(h, positions, segment_ids, decode=decode)
        x = nn.with_logical_constraint(x + h, ACT)
        h = make_norm(c.norm, name="mlp_norm", **norm)(x)
        if self.is_moe():
            h = MoE(
                num_experts=c.moe_num_experts,
                top_k=c.moe_top_k,
                hidden_dim=c.moe_mlp_dim if c.moe_mlp_dim > 0 else c.mlp_dim,
                kind=c.ffn,
                capacity_factor=c.moe_capacity_factor,
                dropless=c.moe_dropless,
                renormalize=c.moe_renormalize,
                aux_weight=c.moe_aux_weight,
                z_weight=c.moe_z_weight,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="moe",
            )(h, None if segment_ids is None else segment_ids != 0, decode=decode)
        else:
            mlp = dict(kind=c.ffn, use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype)
            h = MLP(c.d_model, c.mlp_dim, **mlp, name="mlp")(h)
        return nn.with_logical_constraint(x + h, ACT)


class DecoderLM(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, *, positions=None, segment_ids=None, decode: bool = False, head="logits"):
        """tokens: [batch, len] int -> logits [batch, len, vocab] float32 (head="logits").

        positions: [batch, len], index within each packed segment (default 0..len-1).
        segment_ids: [batch, len], packed documents attend only within themselves; 0 = padding.
        decode: use and update the KV cache in the "cache" collection.
        head: one of HEADS -> that output; a tuple of them -> {name: output}. "hidden" is
        [batch, len, d_model], "scalar" [batch, len] (its parameters, "scalar_head", exist only
        in models initialised with it, and train.init_from leaves them fresh).
        """
        c = self.config
        heads = (head,) if isinstance(head, str) else tuple(head)
        if not heads or any(h not in HEADS for h in heads):
            raise ValueError(f"head={head!r}; choose from {HEADS} (or a tuple of them)")
        if c.position == "relative":
            raise ValueError("model.position='relative' (T5 bias) is for encoder and encoder-decoder models")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        embed = nn.Embed(
            c.vocab_size, c.d_model, embedding_init=embed_init, dtype=c.dtype, param_dtype=c.param_dtype, name="embed"
        )
        x = embed(tokens)  # [b, len, d]
        if c.position == "learned":
            pos_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed"))
            x = x + nn.Embed(
                c.max_len,
                c.d_model,
                embedding_init=pos_init,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="pos_embed",
            )(positions)
        elif c.position == "sinusoidal":
            x = x + sinusoidal_embedding(positions, c.d_model).astype(x.dtype)
        x = nn.with_logical_constraint(x, ACT)
        for i in range(c.num_layers):
            x = Block(c, index=i, name=f"block_{i}")(x, positions, segment_ids, decode)
        x = make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name="final_norm")(x)
        out = {}
        if "hidden" in heads:
            out["hidden"] = x.astype(jnp.float32)
        if "scalar" in heads:
            out["scalar"] = scalar_head(c, x)
        if "logits" in heads:
            out["logits"] = self._logits(embed, x)
        return out[head] if isinstance(head, str) else out

    def _logits(self, embed, x):
        c = self.config
        if c.tie_embeddings:
            # Unit-variance embeddings make tied logits too large at init; scale by 1/sqrt(d).
            # Scaling the [.., d_model] input rather than the [.., vocab] logits is the same
            # linear map, with vocab/d_model times fewer multiplies (forward and backward).
            if c.scale_tied_logits:
                x = x * jnp.asarray(c.d_model**-0.5, x.dtype)
            logits = embed.attend(x)
        else:
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab"))
            logits = nn.Dense(
                c.vocab_size, use_bias=False, kernel_init=init, dtype=c.dtype, param_dtype=c.param_dtype, name="lm_head"
            )(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits.astype(jnp.float32)


def scalar_head(c: ModelConfig, x):
    """Dense(d_model -> 1) on the last axis, float32 without it: a score per position (or per sequence).

    Called from a compact module's __call__, so its parameters ("scalar_head") belong to that module.
    Small init (std 0.02 over unit-RMS features): scores and values start near 0.
    """
    kernel = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed", None))
    bias = nn.with_logical_partitioning(nn.initializers.zeros, (None,))
    dense = nn.Dense(
        1, kernel_init=kernel, bias_init=bias, dtype=c.dtype, param_dtype=c.param_dtype, name="scalar_head"
    )
    return dense(x)[..., 0].astype(jnp.float32)


def init_params(model: DecoderLM, rng: jax.Array, batch: int = 1):
    """Boxed (logically partitioned) parameters; call under jax.eval_shape for shapes only."""
    tokens = jnp.zeros((batch, min(8, model.config.max_len)), jnp.int32)
    return model.init(rng, tokens)["params"]
