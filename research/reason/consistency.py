"""Self-consistency (Wang et al. 2022): sample N reasoning paths, extract each one's answer, keep the most common.

    answers = self_consistency(sample_fn, extract, prompts, num_samples=16)

`sample_fn(prompts, n)` returns a flat, prompt-major list of response texts
(text p * n + s is sample s of prompt p, the sampler's row order) and
`extract(text)` an answer string, or None when the response holds no
well-formed answer. A None never votes. With the project's sampler:

    def sample_fn(prompts, n):
        config = SamplingConfig(max_new_tokens=256, temperature=0.7, num_samples=n, stop_tokens=(eos,))
        out = sample(model, params, [tokenizer.encode(p) for p in prompts], config, rng)
        return out.texts(tokenizer, skip_ids=(eos,))

Measuring. `vote_curve(answers, gold, ns)` scores a table of N extracted
answers per prompt at several n <= N without sampling again:
  maj@n   accuracy of the majority vote over the first n samples of each prompt
  pass@n  the chance that at least one of n samples is right, from all N samples
          with the unbiased estimator of Chen et al. 2021 (`pass_at_k`)
  pass@1  mean per-sample accuracy (pass@n at n = 1)
Self-consistency costs N model calls per prompt (one per sampled response),
the unit research/reason/tree.py counts in.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the answer that occurs first; all None -> None."""
    if len(answers) == 0:
        raise ValueError("answers is empty: a majority vote needs at least one sample")
    counts: dict[str, int] = {}  # insertion order = order of first occurrence
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    best, best_count = None, 0
    for answer, count in counts.items():
        if count > best_count:  # strict: an equal count later never displaces an earlier answer
            best, best_count = answer, count
    return best


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n - c, k) / C(n, k).

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the binomials.
    """
    n, c = num_samples, num_correct
    if n < 1:
        raise ValueError(f"num_samples={n} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"num_correct={c} must be in [0, num_samples={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, num_samples={n}]")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def vote_curve(answers: list[list[str | None]], gold: list[str], ns: Sequence[int]) -> dict[str, float]:
    """maj@n and pass@n for each n in ns, pass@1, distinct_answers and well_formed, over a table of answers.

    answers[p][s] is the extracted answer of sample s of prompt p (None: not well formed), gold[p]
    the reference answer; a sample is correct when its answer == gold[p]. Returns a dict with keys
    "maj@{n}" and "pass@{n}" for each n, "pass@1", "distinct_answers" (mean number of distinct
    non-None answers per prompt, over all samples) and "well_formed" (fraction of samples not None).

    maj@n votes over the *first* n of the N samples of each prompt. The samples of a prompt are
    i.i.d., so the first n are a random draw of n and maj@n is an unbiased estimate of the expected
    majority-vote accuracy at n. It is not the lowest-variance one (that would average the vote over
    all n-subsets of the N), and the points of one curve are correlated: maj@n and maj@m share
    their first min(n, m) samples (at n = N every point reuses the same table), so the curve is
    smoother than independent estimates would be and its differences are not independent. pass@n
    uses all N samples through the unbiased estimator and needs no such caveat beyond the shared table.
    """
    if len(answers) == 0:
        raise ValueError("answers is empty: a vote curve needs at least one prompt")
    per_prompt = {len(row) for row in answers}
    if len(per_prompt) != 1:
        raise ValueError(f"answers: every prompt needs the same number of samples, got {sorted(per_prompt)}")
    (num,) = per_prompt
    if num < 1:
        raise ValueError("answers: every prompt needs at least one sample")
    if len(gold) != len(answers):
        raise ValueError(f"gold has {len(gold)} answers for {len(answers)} prompts")
    ns = list(ns)
    if not ns:
        raise ValueError("ns is empty: name at least one n")
    bad = [n for n in ns if not (isinstance(n, numbers.Integral) and 1 <= n <= num)]
    if bad:
        raise ValueError(f"ns={bad} must be integers in [1, {num}] (samples per prompt)")

    prompts = len(answers)
    correct = [[a is not None and a == g for a in row] for row, g in zip(answers, gold, strict=True)]
    out: dict[str, float] = {}
    for n in ns:
        out[f"maj@{n}"] = sum(majority_vote(row[:n]) == g for row, g in zip(answers, gold, strict=True)) / prompts
        out[f"pass@{n}"] = sum(pass_at_k(num, sum(row), n) for row in correct) / prompts
    out["pass@1"] = sum(sum(row) for row in correct) / (prompts * num)
    out["distinct_answers"] = sum(len({a for a in row if a is not None}) for row in answers) / prompts
    out["well_formed"] = sum(a is not None for row in answers for a in row) / (prompts * num)
    return out


def self_consistency(
    sample_fn: Callable[[Sequence, int], Sequence[str]],
    extract: Callable[[str], str | None],
    prompts: Sequence,
    num_samples: int,
) -> list[str | None]:
    """The majority-voted answer of each prompt over num_samples sampled responses (N model calls a prompt)."""
    if num_samples <= 0:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    texts = list(sample_fn(prompts, num_samples))
    if len(texts) != len(prompts) * num_samples:
        raise ValueError(
            f"sample_fn returned {len(texts)} texts for {len(prompts)} prompts x num_samples={num_samples}"
        )
    answers = [extract(t) for t in texts]
    return [majority_vote(answers[p * num_samples : (p + 1) * num_samples]) for p in range(len(prompts))]
