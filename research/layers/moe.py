"""Mixture of Experts FFN: a float32 softmax router picks top-k of E experts per token.

Two ways to run the experts, same router, same result when nothing is dropped:

- Capacity (GShard/Switch): each group (one batch row) gives every expert a buffer
  of C = ceil(capacity_factor * tokens * k / E) slots. Tokens claim slots in
  sequence order (all of token s's choices before token s+1's), so whether a
  token is dropped depends only on earlier tokens: the layer stays causal, which
  the usual "first choices before second choices" order is not. Dispatch and
  combine are one-hot einsums; the expert buffers [E, groups, C, d] are
  constrained to shard E over the `expert` mesh axis while the tokens were
  sharded over it as batch, so XLA's SPMD partitioner moves them with an
  all-to-all. This is the expert-parallel path.
- Dropless (MegaBlocks-style): every (token, choice) pair is sorted by expert and
  the experts run as two grouped matmuls (`jax.lax.ragged_dot`) over the
  variable-size groups. No token is ever dropped and a token's output depends on
  no other token; decoding always takes this path. Over an `expert` mesh axis it
  runs in a shard_map: each device gathers its expert peers' rows, runs its own
  E / ep experts, and reduce-scatters the partial outputs back (exact; moves
  every token instead of only the routed ones, which an all-to-all of ragged
  sizes would avoid).

Auxiliary losses (weighted, sown into "losses"): Switch load balancing
E * sum_i f_i * P_i (f_i: fraction of assignments to expert i, P_i: mean router
probability; 1 when balanced) and the router z-loss mean(logsumexp(logits)^2).
Metrics sown into "metrics": per-expert load f [E], its imbalance E * max_i f_i,
dropped fraction, unweighted aux and z losses. `reference_moe` is the slow per-token loop the tests compare to.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.mlp import FFNS

# The experts are the dense MLP's kinds (research.layers.mlp): one input matrix, or a gated pair.
_ACT = {"gelu": nn.gelu, "gelu_exact": lambda h: nn.gelu(h, approximate=False), "relu": nn.relu}
_GATED = {"swiglu": nn.silu, "geglu": nn.gelu}


def check_config(model, mesh) -> None:
    """Validates config.model.moe_* (and mesh.expert against them); raises ValueError naming the key."""
    e = model.moe_num_experts
    if e < 0:
        raise ValueError(f"model.moe_num_experts must be >= 0 (0 = dense FFN everywhere), got {e}")
    if e == 0:
        return
    if not 1 <= model.moe_top_k <= e:
        raise ValueError(f"model.moe_top_k={model.moe_top_k} must be in [1, model.moe_num_experts={e}]")
    if model.moe_top_k == 1 and model.moe_renormalize:
        # The one gate would be p / p = 1 for every token: the LM loss could not reach the router.
        raise ValueError(
            "model.moe_top_k=1 with model.moe_renormalize=True makes every gate 1, so the router learns only "
            "from the aux losses; set model.moe_renormalize=False (Switch: the gate is the router probability)"
        )
    if model.moe_every < 1:
        raise ValueError(f"model.moe_every must be >= 1 (every k-th block is MoE), got {model.moe_every}")
    if model.moe_every > model.num_layers:
        raise ValueError(
            f"model.moe_every={model.moe_every} > model.num_layers={model.num_layers}: no block would be MoE"
        )
    if model.moe_capacity_factor <= 0:
        raise ValueError(f"model.moe_capacity_factor must be > 0, got {model.moe_capacity_factor}")
    if model.moe_mlp_dim == 0 or model.moe_mlp_dim < -1:
        raise ValueError(f"model.moe_mlp_dim must be > 0 or -1 (= model.mlp_dim), got {model.moe_mlp_dim}")
    if model.moe_aux_weight < 0 or model.moe_z_weight < 0:
        raise ValueError(
            f"model.moe_aux_weight={model.moe_aux_weight} and model.moe_z_weight={model.moe_z_weight} must be >= 0"
        )
    if mesh.expert > 0 and e % mesh.expert:
        raise ValueError(f"model.moe_num_experts={e} must be divisible by mesh.expert={mesh.expert}")


# --- Router and losses: pure functions of the router logits. ---


def route(logits, top_k: int, renormalize: bool):
    """logits [..., E] float32 -> (probs [..., E], gates [..., k], experts [..., k] int32).

    renormalize: gates are the top-k probabilities rescaled to sum to 1 (= a softmax
    over the selected logits, Mixtral); else the raw probabilities (Switch, GShard).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    gates, experts = jax.lax.top_k(probs, top_k)
    if renormalize:
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    return probs, gates, experts.astype(jnp.int32)


def load_balancing_loss(probs, experts, valid, num_experts: int):
    """Switch aux loss E * sum_i f_i * P_i, and the load f [E].

    f_i: fraction of valid (token, choice) assignments sent to expert i (sums to 1);
    P_i: mean router probability of expert i over valid tokens. With balanced
    assignments (f_i = 1/E) the loss is sum_i P_i = 1 whatever P is; it grows as
    both the assignments and the probabilities pile onto the same experts.
    """
    w = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    counts = jnp.einsum("...ke,...->e", jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), w)
    load = counts / (n * experts.shape[-1])
    mean_prob = jnp.einsum("...e,...->e", probs, w) / n
    return num_experts * jnp.sum(load * mean_prob), load


def router_z_loss(logits, valid):
    """mean over valid tokens of logsumexp(logits)^2 (ST-MoE): keeps router logits small."""
    w = valid.astype(jnp.float32)
    z = jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(z**2 * w) / jnp.maximum(jnp.sum(w), 1.0)


def expert_capacity(group_size: int, num_experts: int, top_k: int, factor: float) -> int:
    """Slots per expert per group; never more than group_size (a token picks an expert at most once)."""
    return max(1, min(group_size, math.ceil(factor * group_size * top_k / num_experts)))


def capacity_masks(experts, gates, valid, num_experts: int, capacity: int):
    """Slots in sequence order -> (dispatch [G, S, E, C] bool, combine [G, S, E, C] float32, kept [G, S, k]).

    experts, gates: [G, S, k]; valid: [G, S]. Token s's choices claim slots before
    token s+1's, so a token's fate depends only on earlier tokens (causal).
    """
    g, s, k = experts.shape
    onehot = jax.nn.one_hot(experts, num_experts, dtype=jnp.int32) * valid[..., None, None]  # [G, S, k, E]
    flat = onehot.reshape(g, s * k, num_experts)  # [G, S*k, E], token-major order
    slot = (jnp.cumsum(flat, axis=1) - 1).reshape(g, s, k, num_experts)  # [G, S, k, E]
    slot = jnp.sum(slot * onehot, axis=-1)  # [G, S, k]: the slot each assignment asks for
    kept = (jnp.sum(onehot, axis=-1) > 0) & (slot < capacity)  # [G, S, k]
    slots = jax.nn.one_hot(jnp.where(kept, slot, capacity), capacity, dtype=jnp.float32)  # [G, S, k, C]
    assign = jnp.einsum("gske,gskc->gskec", onehot.astype(jnp.float32), slots)  # [G, S, k, E, C]
    dispatch = jnp.sum(assign, axis=2) > 0  # [G, S, E, C]
    combine = jnp.einsum("gskec,gsk->gsec", assign, gates.astype(jnp.float32))
    return dispatch, combine, kept


# --- The layer. ---


class MoE(nn.Module):
    """x [batch, len, d_model] -> [batch, len, d_model]; see the module docstring."""

    num_experts: int
    top_k: int
    hidden_dim: int
    kind: str = "swiglu"  # the experts' FFN, one of research.layers.mlp.FFNS
    capacity_factor: float = 1.25
    dropless: bool = False
    renormalize: bool = True
    aux_weight: float = 0.01
    z_weight: float = 1e-3
    dtype: jax.typing.DTypeLike = None
    param_dtype: jax.typing.DTypeLike = "float32"

    def _weights(self, d_model):
        if self.kind not in FFNS:
            raise ValueError(f"model.ffn={self.kind!r}; choose one of {FFNS}")
        e, f = self.num_experts, self.hidden_dim
        # Fan-in per expert: [E, in, out] with the expert axis as a batch axis of the initializer.
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))

        def param(name, shape, names):
            return self.param(name, nn.with_logical_partitioning(init, names), shape, self.param_dtype)

        up = ("wi_gate", "wi_up") if self.kind in _GATED else ("wi",)
        w = {n: param(n, (e, d_model, f), ("expert", "embed", "mlp")) for n in up}
        w["wo"] = param("wo", (e, f, d_model), ("expert", "mlp", "embed"))
        return jax.tree.map(lambda p: jnp.asarray(p, self.dtype or p.dtype), w)

    def _activate(self, up):
        """up(name) -> x @ w[name] for this FFN's input matrices; returns the hidden activation."""
        if self.kind in _GATED:
            return _GATED[self.kind](up("wi_gate")) * up("wi_up")
        return _ACT[self.kind](up("wi"))

    @nn.compact
    def __call__(self, x, valid=None, *, decode: bool = False):
        """x: [batch, len, d]; valid: [batch, len] bool, False for padding (routed nowhere, not counted).

        decode=True always runs dropless: generation is never capacity-limited, and a
        token's output then depends on no other token in the batch.
        """
        b, s, d = x.shape
        if valid is None:
            valid = jnp.ones((b, s), bool)
        # The router in float32: its softmax and top-k decide discrete choices, which
        # low precision would flip (Switch Transformer, "selective precision").
        router_init = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")  # Switch: small init
        router = self.param(
            "router", nn.with_logical_partitioning(router_init, ("embed", None)), (d, self.num_experts), "float32"
        )
        logits = jnp.einsum("bsd,de->bse", x.astype(jnp.float32), router)  # [b, s, E]
        probs, gates, experts = route(logits, self.top_k, self.renormalize)
        aux, load = load_balancing_loss(probs, experts, valid, self.num_experts)
        z = router_z_loss(logits, valid)
        w = self._weights(d)
        x = x.astype(self.dtype or x.dtype)

        if self.dropless or decode:
            y = self._dropless(x, w, gates, experts, valid)
            dropped = jnp.zeros((), jnp.float32)
        else:
            y, kept = self._with_capacity(x, w, gates, experts, valid)
            assigned = jnp.maximum(jnp.sum(valid) * self.top_k, 1)
            dropped = 1.0 - jnp.sum(kept) / assigned

        self.sow("losses", "moe_aux", self.aux_weight * aux)
        self.sow("losses", "moe_z", self.z_weight * z)
        self.sow("metrics", "moe_load", load)
        # E * max_i load_i (1 = balanced, E = collapsed): per layer, so averaging over layers can't hide it.
        self.sow("metrics", "moe_imbalance", self.num_experts * jnp.max(load))
        self.sow("metrics", "moe_dropped_fraction", dropped)
        self.sow("metrics", "moe_aux_loss", aux)
        self.sow("metrics", "moe_z_loss", z)
        return y

    def _with_capacity(self, x, w, gates, experts, valid):
        b, s, _ = x.shape
        capacity = expert_capacity(s, self.num_experts, self.top_k, self.capacity_factor)
        dispatch, combine, kept = capacity_masks(experts, gates, valid, self.num_experts, capacity)
        # Groups are batch rows, sharded like the batch (which includes `expert`); the
        # expert buffers shard E over `expert` instead: this resharding is the all-to-all.
        buffers = ("activation_expert", "activation_expert_group", None, "activation_embed")
        xe = jnp.einsum("gsec,gsd->egcd", dispatch.astype(x.dtype), x)  # [E, G, C, d]
        xe = nn.with_logical_constraint(xe, buffers)
        h = self._activate(lambda n: jnp.einsum("egcd,edf->egcf", xe, w[n]))  # [E, G, C, f]
        h = nn.with_logical_constraint(h, buffers[:3] + ("activation_mlp",))
        ye = jnp.einsum("egcf,efd->egcd", h, w["wo"])  # [E, G, C, d]
        ye = nn.with_logical_constraint(ye, buffers)
        y = jnp.einsum("egcd,gsec->gsd", ye, combine.astype(ye.dtype))  # back to token order: all-to-all
        y = nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_embed"))
        return y, kept

    def _dropless(self, x, w, gates, experts, valid):
        mesh = jax.sharding.get_abstract_mesh()
        rows = nn.logical_to_mesh_axes(("activation_batch",))
        ep = 1 if mesh.empty or "expert" not in mesh.axis_names else mesh.shape["expert"]
        if ep == 1 or rows is None or "expert" not in jax.tree.leaves(tuple(rows)):
            return self._grouped_ffn(x, w, gates, experts, valid, first_expert=0)

        # Expert parallel: each device holds E / ep experts and its own rows. It gathers the rows of
        # its `expert` peers, runs its experts on the (token, choice) pairs routed to them, and
        # reduce-scatters the partial outputs back to the rows' owners. Exact, and nothing is
        # dropped; it moves every token rather than only the routed ones (an all-to-all would need
        # ragged sizes), so the capacity path remains the communication-efficient one.
        def local(x, gates, experts, valid, w):
            x, gates, experts, valid = (
                jax.lax.all_gather(a, "expert", axis=0, tiled=True) for a in (x, gates, experts, valid)
            )  # [rows * ep, ...]: the peers' rows, in axis_index order
            first = jax.lax.axis_index("expert") * w["wo"].shape[0]
            y = self._grouped_ffn(x, w, gates, experts, valid, first_expert=first)
            return jax.lax.psum_scatter(y, "expert", scatter_dimension=0, tiled=True)

        row_spec = jax.sharding.PartitionSpec(*rows)
        weight_spec = jax.tree.map(lambda _: jax.sharding.PartitionSpec("expert"), w)
        return jax.shard_map(local, mesh=mesh, in_specs=(row_spec,) * 4 + (weight_spec,), out_specs=row_spec)(
            x, gates, experts, valid, w
        )

    def _grouped_ffn(self, x, w, gates, experts, valid, first_expert):
        """Sum over choices of gate * expert(token), for the experts [first_expert, first_expert + len(w))."""
        b, s, d = x.shape
        k, e = self.top_k, w["wo"].shape[0]
        local = experts - first_expert  # [b, s, k]
        mine = valid[..., None] & (local >= 0) & (local < e)
        ids = jnp.where(mine, local, e).reshape(-1)  # [b*s*k]; not ours -> e, sorted last
        order = jnp.argsort(ids, stable=True)
        sorted_ids = ids[order]
        group_sizes = jnp.sum(jax.nn.one_hot(ids, e, dtype=jnp.int32), axis=0)  # [e]; id e counts nowhere
        xs = x.reshape(b * s, d)[order // k]  # [b*s*k, d]: each assignment's token, grouped by expert
        h = self._activate(lambda n: jax.lax.ragged_dot(xs, w[n], group_sizes))  # [b*s*k, f]
        ys = jax.lax.ragged_dot(h, w["wo"], group_sizes)  # [b*s*k, d]
        ys = jnp.where((sorted_ids < e)[:, None], ys, 0)  # rows past the groups are unspecified
        ya = jnp.zeros_like(ys).at[order].set(ys).reshape(b, s, k, d)  # back to (token, choice) order
        return jnp.einsum("bskd,bsk->bsd", ya, (gates * mine).astype(ya.dtype))


# --- The slow reference: one token at a time, in numpy. ---


def reference_moe(x, valid, router, weights, *, kind, top_k, renormalize, capacity=None):
    """Per-token loop with explicit per-(row, expert) slot counters; capacity=None is dropless.

    x [b, s, d], valid [b, s], router [d, E], weights {"wi"|"wi_gate","wi_up", "wo": [E, ...]} as numpy.
    Returns (y [b, s, d], kept [b, s, k] bool).
    """
    x, router = np.asarray(x, np.float64), np.asarray(router, np.float64)
    w = {n: np.asarray(v, np.float64) for n, v in weights.items()}
    b, s, d = x.shape
    num_experts = router.shape[1]
    gelu = lambda u: 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))  # noqa: E731
    act = {
        "gelu": gelu,
        "gelu_exact": lambda u: 0.5 * u * (1 + np.vectorize(math.erf)(u / np.sqrt(2))),
        "relu": lambda u: np.maximum(u, 0),
        "swiglu": lambda u: u / (1 + np.exp(-u)),
        "geglu": gelu,
    }[kind]
    y = np.zeros_like(x)
    kept = np.zeros((b, s, top_k), bool)
    for row in range(b):
        used = [0] * num_experts
        for t in range(s):
            if not valid[row, t]:
                continue
            logits = x[row, t] @ router
            p = np.exp(logits - logits.max())
            p /= p.sum()
            choice = np.argsort(-p, kind="stable")[:top_k]
            gate = p[choice] / (p[choice].sum() if renormalize else 1.0)
            for r, ex in enumerate(choice):
                if capacity is not None and used[ex] >= capacity:
                    continue
                used[ex] += 1
                kept[row, t, r] = True
                u = x[row, t]
                if "wi_gate" in w:
                    h = act(u @ w["wi_gate"][ex]) * (u @ w["wi_up"][ex])
                else:
                    h = act(u @ w["wi"][ex])
                y[row, t] += gate[r] * (h @ w["wo"][ex])
    return y, kept
