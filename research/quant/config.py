"""Validation of the `config.quant` section.

Called once from research.config.validate, so bad values fail before anything compiles.
"""

import re

from research.quant.tensor import BITS, FORMATS

QUANT_FORMATS = ("none", *FORMATS)


def _regex(path, pattern):
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{path}={pattern!r} is not a valid regular expression ({e})") from None


def validate_quant(config) -> None:
    q, m = config.quant, config.model
    if q.format not in QUANT_FORMATS:
        raise ValueError(f"quant.format={q.format!r}; choose one of {list(QUANT_FORMATS)}")
    _regex("quant.targets", q.targets)
    _regex("quant.exclude", q.exclude)
    if q.group_size != -1:
        if q.group_size <= 0:
            raise ValueError(f"quant.group_size must be -1 (per channel) or > 0, got {q.group_size}")
        if q.format != "none" and BITS[q.format] == 4 and q.group_size % 2:
            raise ValueError(f"quant.group_size={q.group_size} must be even for {q.format}: codes are packed in pairs")
        # Matmuls contract d_model (embeddings, q/k/v, MLP in; heads * head_dim = d_model for the
        # attention output) and the MLP width (MLP out).
        mlp_dim = 4 * m.d_model if m.mlp_dim == -1 else m.mlp_dim
        for name, dim in (("model.d_model", m.d_model), ("model.mlp_dim", mlp_dim)):
            if q.format != "none" and dim % q.group_size:
                raise ValueError(f"quant.group_size={q.group_size} does not divide {name}={dim}")
