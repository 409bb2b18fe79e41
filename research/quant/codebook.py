"""The NF4 ("4-bit NormalFloat") codebook of QLoRA (Dettmers et al., 2023), derived, not pasted.

Pretrained weights are roughly normal, so a 4-bit code is information-theoretically
best when each of its 16 values covers the same probability mass of N(0, 1). The
construction (QLoRA section 3 and bitsandbytes' `create_normal_map`):

- take the quantiles of N(0, 1) at 2^(k-1) + 1 = 9 evenly spaced probabilities from
  `offset` down to 0.5 for the positive half, and at 2^(k-1) = 8 for the negative
  half; each half ends on the median, 0, which is kept once, so zero is exactly
  representable (padding and zero weights stay zero) and the code is asymmetric:
  8 positive values, 7 negative ones and 0;
- `offset` = (1 - 1/(2*16) + 1 - 1/(2*15)) / 2 = 0.9677..., the mean of the two
  halves' outermost quantile probabilities, so the extreme values are finite;
- normalise by the largest value, so the code spans [-1, 1] and a block's absmax
  maps to +-1.
"""

from statistics import NormalDist

import numpy as np

NF4_OFFSET = 0.5 * (1 - 1 / 32) + 0.5 * (1 - 1 / 30)  # 0.96770833...


def normal_float_codebook(bits: int = 4, offset: float = NF4_OFFSET) -> np.ndarray:
    """Sorted float32 [2**bits] values in [-1, 1], zero included exactly once."""
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    half = 2 ** (bits - 1)
    ppf = NormalDist().inv_cdf  # exact float64 inverse normal CDF from the standard library
    positive = [ppf(p) for p in np.linspace(offset, 0.5, half + 1)[:-1]]  # `half` values > 0
    negative = [-ppf(p) for p in np.linspace(offset, 0.5, half)[:-1]]  # `half - 1` values < 0
    values = np.array(sorted(positive + [0.0] + negative), np.float64)
    return (values / values.max()).astype(np.float32)


NF4 = normal_float_codebook(4)
# Midpoints between neighbours: a value's nearest code is its rank among them.
NF4_MIDPOINTS = ((NF4[1:] + NF4[:-1]) / 2).astype(np.float32)
NF4_MAX_HALF_GAP = float(np.max(np.diff(NF4)) / 2)  # worst rounding error, in units of the block's absmax
