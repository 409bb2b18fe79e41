"""ROUGE-1/2/L F1 (Lin 2004) through Google's `rouge-score`, and the preference it implies.

ROUGE needs a reference text, which LLM-as-a-judge does not; the judge
experiment reports both against the gold preference.
"""

from __future__ import annotations

import functools

import numpy as np

KINDS = ("rouge1", "rouge2", "rougeL")


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(KINDS), use_stemmer=False)


def rouge(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """{"rouge1" | "rouge2" | "rougeL": [n] F1} of each prediction against its reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: one each")
    scores = [_scorer().score(r, p) for p, r in zip(predictions, references, strict=True)]
    return {k: np.array([s[k].fmeasure for s in scores]) for k in KINDS}


def rouge_prefers_first(references: list[str], first: list[str], second: list[str], *, kind: str = "rougeL"):
    """[n] P(first better) as ROUGE sees it: 1 when its F1 is higher, 0 when lower, 0.5 on a tie."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
    a, b = rouge(first, references)[kind], rouge(second, references)[kind]
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
