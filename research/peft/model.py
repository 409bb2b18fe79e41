"""One entry point over the PEFT methods: config -> trainable tree -> the variables a model runs with.

    spec = PeftSpec.from_config(config.peft)
    trainable = init_trainable(spec, model, base_params, init_inputs, rng)   # the only thing trained
    logits = peft_apply(spec, model, base, trainable, tokens, ...)            # base + method
    generate(PeftModel(model, spec), {"base": base, "peft": trainable}, prompts, ...)

Methods: "none" (the trainable tree is the full parameter tree, no base), "lora",
"prefix", "adapter".
"""

import contextlib
import dataclasses

import flax.linen as nn

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


def peft_apply(spec: PeftSpec, model: nn.Module, base, trainable, *args, rng=None, **kwargs):
    """model.apply with the method in place; extra keyword arguments (mutable=...) go to apply."""
    with context(spec):
        return model.apply(variables(spec, base, trainable, rng), *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class PeftModel:
    """Looks like the base model to research.decode: `config`, `init`, `apply`.

    Its params are {"base": ..., "peft": ...}; LoRA is merged at each apply
    (merge once with `lora.merge` and pass the plain model instead when
    generating a lot). Hashable, as a jit static argument must be.
    """

    model: nn.Module
    spec: PeftSpec

    @property
    def config(self):
        return self.model.config

    def init(self, rng, *args, **kwargs):
        return self.model.init(rng, *args, **kwargs)

    def apply(self, variables_in, *args, **kwargs):
        extra = dict(variables_in)
        params = extra.pop("params")
        with context(self.spec):
            return self.model.apply({**extra, **variables(self.spec, params["base"], params["peft"])}, *args, **kwargs)
