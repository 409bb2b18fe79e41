"""Post-training: preference tuning and RL, as pure, jit-friendly functions of arrays.

`logprobs`: per-token log-probabilities and entropies of a forward pass, aligned
with the token sequence, and masked sums/means. `losses`: Bradley-Terry reward
modelling, DPO/IPO, and the PPO clipped policy and value losses. `advantages`:
GAE, whitening, GRPO's group-relative advantages, explained variance. `kl`:
per-token KL estimators and the adaptive KL controller. Per-token arrays are
[b, L] with entry [:, t] belonging to token t; `mask` marks the tokens that
count. Nothing is imported here, so importing the package is cheap.
"""
