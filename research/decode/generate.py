"""`generate`: token lists in, token lists out, on top of the sampler (research/decode/sampler.py).

For scripts and evaluation that want plain lists: one sample per prompt,
each cut after its first stop token. Everything that needs arrays,
log-probabilities, several samples or token processors calls `sample`.
"""

from collections.abc import Sequence

from research.decode.sampler import SamplingConfig, sample


def generate(
    model,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    rng=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    mesh=None,
) -> list[list[int]]:
    """Continues each prompt by up to `max_new_tokens` tokens (greedy by default).

    Returns, per prompt, the new tokens up to and including the first stop
    token. Prompts may differ in length. Raises before compiling if a prompt
    plus the new tokens exceeds the model's context or holds ids outside the vocabulary.
    """
    config = SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        stop_tokens=tuple(int(t) for t in stop_tokens),
        pad_id=int(pad_id),
    )
    return sample(model, params, prompts, config, rng, mesh=mesh).responses()
