"""One entry point over the PEFT methods: config -> trainable tree -> the variables a model runs with.

    spec = PeftSpec.from_config(config.peft)
    adapted = AdaptedModel(model, spec)                      # + quantized=True for QLoRA, heads=... for RM/PPO
    trainable = adapted.init_trainable(rng, tokens)          # the only thing trained
    logits = adapted.apply({"params": {"trainable": trainable, "base": base}}, tokens, ...)
    generate(*adapted.for_decoding(trainable, base), prompts, ...)

Methods: "none" (the trainable tree is the full parameter tree, no base), "lora",
"prefix", "adapter". research/train/runs.py loads such a model from a run's workdir.
"""

import contextlib
import dataclasses
import re

import flax.linen as nn
import jax

from research.peft import adapters as adapters_lib
from research.peft import lora as lora_lib
from research.peft import prefix as prefix_lib

METHODS = ("none", "lora", "prefix", "adapter")


@dataclasses.dataclass(frozen=True)
class PeftSpec:
    """config.peft as a hashable value (it is a static argument of jitted generation)."""

    method: str = "none"
    rank: int = 8  # lora
    alpha: float = 16.0  # lora: delta = alpha / rank * A @ B
    dropout: float = 0.0  # lora: dropout on the branch's input features
    target: str = r"attn/(query|key|value|out)$"  # lora: regex over parameter paths
    prefix_len: int = 8  # prefix: learned key/value rows per attention layer
    adapter_dim: int = 16  # adapter: bottleneck width

    @classmethod
    def from_config(cls, peft) -> "PeftSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in dict(peft).items() if k in fields})
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"peft.method={self.method!r}; choose one of {list(METHODS)}")
        for name in ("rank", "prefix_len", "adapter_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"peft.{name}={value!r} must be an int >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft.dropout={self.dropout} must be in [0, 1)")
        if self.alpha <= 0:
            raise ValueError(f"peft.alpha={self.alpha} must be > 0")
        try:
            re.compile(self.target)
        except (re.error, TypeError) as e:
            raise ValueError(f"peft.target={self.target!r} is not a valid regular expression ({e})") from None


def init_trainable(spec: PeftSpec, model: nn.Module, base_params, init_inputs: dict, rng):
    """The method's fresh trainable tree. base_params: the base's (boxed, possibly abstract) params;
    LoRA reads their shapes and logical names, prefix and adapters trace `model` to find its layers."""
    if spec.method == "lora":
        return lora_lib.init_lora(base_params, target=spec.target, rank=spec.rank, rng=rng)
    if spec.method == "prefix":
        return prefix_lib.init_prefix(model, init_inputs, prefix_len=spec.prefix_len, rng=rng)
    if spec.method == "adapter":
        return adapters_lib.init_adapters(model, init_inputs, dim=spec.adapter_dim, rng=rng)
    raise ValueError(f"peft.method={spec.method!r} has no separate trainable tree")


def variables(spec: PeftSpec, base, trainable, rng=None) -> dict:
    """The variables `model.apply` takes for base + method (rng: LoRA dropout, training only)."""
    if spec.method == "none":
        return {"params": trainable}
    if spec.method == "lora":
        return {"params": lora_lib.apply_lora(base, trainable, alpha=spec.alpha, dropout=spec.dropout, rng=rng)}
    if spec.method == "prefix":
        return {"params": base, **prefix_lib.prefix_variables(trainable)}
    return {"params": base, **adapters_lib.adapter_variables(trainable)}


def context(spec: PeftSpec):
    """What must surround `model.apply`: adapters' method interceptor, else nothing."""
    return nn.intercept_methods(adapters_lib.interceptor) if spec.method == "adapter" else contextlib.nullcontext()


# Parameters a PEFT run trains in full beside its method's tree: heads the base does not have
# (a reward model's score, PPO's value head), always freshly initialised.
HEAD_PARAMS = ("scalar_head",)


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
    """A base model and how a run adapts it: the one way every task, evaluator and CLI runs such a model.

    Its params are {"trainable": the run's trained tree, "base": the frozen base (None for method
    "none", whose trainable tree is the whole model)}. With a quantized base (QLoRA) the base is a
    tree of QTensors and the model dequantizes the weights it reads. `heads` are the DecoderLM heads
    its parameters include ("logits", "scalar"); a head the base lacks is trained in full.

    Looks like the base model to research.decode (`config`, `init`, `apply`), and is hashable,
    as a jit static argument must be. For fast decoding merge LoRA first (`for_decoding`).
    """

    model: nn.Module
    spec: PeftSpec = PeftSpec()
    quantized: bool = False
    heads: tuple[str, ...] = ("logits",)

    @property
    def config(self):
        return self.model.config

    @property
    def adapts(self) -> bool:
        return self.spec.method != "none"

    # --- Parameters. ---
    def init_base(self, rng, tokens):
        """Boxed parameters of the whole model with its heads (the trainable tree of method "none")."""
        return self.model.init(rng, tokens, head=self.heads)["params"]

    def init_trainable(self, rng, tokens):
        """Boxed fresh trainable tree: the whole model, or the method's tree plus fresh heads."""
        if not self.adapts:
            return self.init_base(rng, tokens)
        base = jax.eval_shape(self.init_base, jax.random.key(0), tokens)  # shapes and logical names only
        core = {k: v for k, v in base.items() if k not in HEAD_PARAMS}
        trainable = init_trainable(self.spec, self.model, core, {"tokens": tokens}, rng)
        heads = {k: v for k, v in self.init_base(rng, tokens).items() if k in HEAD_PARAMS}
        return {**trainable, **heads}

    def variables(self, trainable, base, rng=None) -> dict:
        """model.apply's variables for the adapted model (rng: LoRA dropout, training only)."""
        if not self.adapts:
            return {"params": trainable}
        trainable = dict(trainable)
        heads = {k: trainable.pop(k) for k in HEAD_PARAMS if k in trainable}
        if self.quantized:
            from research.quant.qlora import qlora_params

            s = self.spec
            out = {"params": qlora_params(base, trainable, alpha=s.alpha, dropout=s.dropout, rng=rng)}
        else:
            out = variables(self.spec, base, trainable, rng)
        return {**out, "params": {**out["params"], **heads}}

    def _runner(self) -> nn.Module:
        if self.quantized:
            from research.quant.transform import quantized_model

            return quantized_model(self.model)
        return self.model

    # --- Running it. ---
    def init(self, rng, *args, **kwargs):
        return self.model.init(rng, *args, **kwargs)

    def apply(self, variables_in, *args, rng=None, **kwargs):
        """model.apply with variables_in = {"params": {"trainable": ..., "base": ...}, other collections...}."""
        extra = dict(variables_in)
        params = extra.pop("params")
        with context(self.spec):
            return self._runner().apply(
                {**extra, **self.variables(params["trainable"], params["base"], rng)}, *args, **kwargs
            )

    def apply_base(self, base, *args, **kwargs):
        """The base alone, unadapted: with PEFT, the reference model of preference tuning comes free."""
        if not self.adapts:
            raise ValueError("peft.method='none': the run trains the whole model; it has no frozen base to apply")
        return self._runner().apply({"params": base}, *args, **kwargs)

    def merged_params(self, trainable, base):
        """The whole model's plain parameters: the trained tree, or base + LoRA merged (dequantized)."""
        if not self.adapts:
            return trainable
        if self.spec.method != "lora":
            raise ValueError(
                f"peft.method={self.spec.method!r} adds layers the base model lacks: it has no merged parameters "
                "(only LoRA merges into the base)"
            )
        if self.quantized:
            from research.quant.transform import dequantize_params

            base = dequantize_params(base)
        trainable = dict(trainable)
        heads = {k: trainable.pop(k) for k in HEAD_PARAMS if k in trainable}
        return {**lora_lib.merge(base, trainable, alpha=self.spec.alpha), **heads}

    def for_decoding(self, trainable, base):
        """(model, params) to decode with fastest: the plain model on merged parameters where they exist."""
        if not self.adapts:
            return self.model, trainable
        if self.spec.method == "lora":
            return self.model, jax.jit(self.merged_params)(trainable, base)
        return self, {"trainable": trainable, "base": base}
