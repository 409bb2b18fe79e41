"""Error bars for experiments run over several seeds: summaries, a separation test, and merged tables.

`python -m research.sweep --seeds K` (research/experiment.py) analyzes each seed
on its own, then `merge_results` folds the seeds' results.json into one
structure of the same shape in which every number that varies across seeds is a
`summarize` dict {"mean", "std", "n", "values"}; `results_markdown` renders it.
A difference between two variants is called one only when `separated` says so.
"""

from __future__ import annotations

import math
import numbers


def summarize(values) -> dict:
    """Mean, sample standard deviation (ddof=1; 0 for one value), count, and the values themselves."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": values}


def is_summary(x) -> bool:
    return isinstance(x, dict) and set(x) == {"mean", "std", "n", "values"}


def mean_err(x) -> tuple[float, float]:
    """(mean, std) of a summary, (x, 0) of a plain number: what a plot's error bar needs from a merged cell."""
    return (x["mean"], x["std"]) if is_summary(x) else (float(x), 0.0)


def plot_band(ax, x, cells, style="o-", *, color=None, label=None, **plot_kwargs):
    """A curve of the cells' means on a matplotlib axis with its ± std band (no band where the cells are plain
    numbers: one seed)."""
    mean, err = (list(v) for v in zip(*(mean_err(c) for c in cells), strict=True))
    ax.plot(x, mean, style, color=color, label=label, **plot_kwargs)
    ax.fill_between(x, [m - e for m, e in zip(mean, err, strict=True)], [m + e for m, e in zip(mean, err, strict=True)],
                    color=color, alpha=0.2, linewidth=0)  # fmt: skip


def separated(a, b) -> bool:
    """Whether the mean ± std intervals of two summaries (or plain numbers) do not overlap.

    Deliberately conservative: with 3 seeds, non-overlapping one-std intervals is
    roughly a two-sided t-test at p < 0.05 for equal spreads, and needs no
    distributional assumption to state."""
    lo_a, hi_a = _interval(a)
    lo_b, hi_b = _interval(b)
    return hi_a < lo_b or hi_b < lo_a


def _interval(x):
    if is_summary(x):
        return x["mean"] - x["std"], x["mean"] + x["std"]
    if _is_number(x):
        return float(x), float(x)
    raise TypeError(f"separated() takes summaries or numbers, got {x!r}")


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def merge_results(per_seed: dict, path: str = "results") -> object:
    """{seed: results of that seed} -> one structure of the same shape.

    Dicts must have the same keys and lists the same length in every seed (a seed
    whose table has other rows or metrics is an error naming where); numbers equal
    in every seed stay plain and the rest become `summarize` dicts (None entries
    are left out of the count); other values equal in every seed stay, and those
    that differ become {"by_seed": {seed: value}}.
    """
    seeds = list(per_seed)
    if not seeds:
        raise ValueError("merge_results needs the results of at least one seed")
    items = [per_seed[s] for s in seeds]
    first = items[0]
    if isinstance(first, dict) and not is_summary(first):
        for seed, item in per_seed.items():
            if not isinstance(item, dict) or set(item) != set(first):
                raise ValueError(
                    f"{path}: seed {seed} has keys {sorted(item) if isinstance(item, dict) else type(item).__name__}, "
                    f"seed {seeds[0]} has {sorted(first)}; every seed's results must share their metrics"
                )
        return {k: merge_results({s: per_seed[s][k] for s in seeds}, f"{path}.{k}") for k in first}
    if isinstance(first, list):
        for seed, item in per_seed.items():
            if not isinstance(item, list) or len(item) != len(first):
                raise ValueError(
                    f"{path}: seed {seed} has {len(item) if isinstance(item, list) else type(item).__name__} "
                    f"entries, seed {seeds[0]} has {len(first)}"
                )
        return [merge_results({s: per_seed[s][i] for s in seeds}, f"{path}[{i}]") for i in range(len(first))]
    present = [x for x in items if x is not None]
    if present and all(_is_number(x) for x in present):
        if len(present) == len(items) and all(x == present[0] for x in present):
            return present[0]
        return summarize(present)
    if all(x == first for x in items):
        return first
    return {"by_seed": dict(per_seed)}


def _is_cell(x) -> bool:
    """Whether x renders as one table cell: a scalar, a summary, or a value that differs by seed."""
    return not isinstance(x, (dict, list)) or is_summary(x) or (isinstance(x, dict) and set(x) == {"by_seed"})


def _format(x, n_seeds: int) -> str:
    if is_summary(x):
        return f"{x['mean']:.4g} ± {x['std']:.2g}" + (f" (n={x['n']})" if x["n"] < n_seeds else "")
    if isinstance(x, dict):
        return "varies: " + ", ".join(f"{s}={v}" for s, v in x["by_seed"].items())
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _cells(x: dict, prefix: str = "") -> dict:
    """A dict's cells as {dotted name: value}, nested dicts flattened; lists are tables of their own."""
    out = {}
    for key, value in x.items():
        if _is_cell(value):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            out.update(_cells(value, f"{prefix}{key}."))
    return out


def _lists(x, path=""):
    """(path, list) for every list in x, x itself included, that is not a cell; outermost first."""
    if _is_cell(x):
        return
    if isinstance(x, list):
        yield path, x
        children = ((f"{path}[{i}]", v) for i, v in enumerate(x))
    else:
        children = ((f"{path}.{k}" if path else k, v) for k, v in x.items())
    for child_path, value in children:
        yield from _lists(value, child_path)


def _table(x, n_seeds: int) -> list[str]:
    if isinstance(x, dict):
        cells = _cells(x)
        return ["| key | value |", "|---|---|"] + [f"| {k} | {_format(v, n_seeds)} |" for k, v in cells.items()]
    if all(isinstance(r, dict) and not _is_cell(r) for r in x):  # rows: one column per cell of any row
        rows = [_cells(r) for r in x]
        columns = list(dict.fromkeys(c for r in rows for c in r))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        cells = [[_format(r[c], n_seeds) if c in r else "—" for c in columns] for r in rows]
        return lines + ["| " + " | ".join(row) + " |" for row in cells]
    return [", ".join(_format(v, n_seeds) if _is_cell(v) else "…" for v in x)]


def results_markdown(merged, *, seeds, failed: dict | None = None) -> str:
    """The merged results as markdown: which seeds went in (and why any failed), then a table for the
    top level's cells and one for every list inside (rows of a table, or a curve)."""
    failed = failed or {}
    done = [s for s in seeds if s not in failed]
    lines = ["# Results over seeds", ""]
    lines.append(
        f"{len(done)} of {len(seeds)} seeds ({', '.join(map(str, done))}); numbers that vary are mean ± std "
        "(sample std over seeds); call a difference one only when the mean ± std intervals separate."
    )
    lines += [f"- seed {seed} FAILED: {why}" for seed, why in failed.items()]
    tables = [("results", merged)] if isinstance(merged, dict) and _cells(merged) else []
    tables += [(path or "results", x) for path, x in _lists(merged) if x]
    for name, x in tables:
        lines += ["", f"## {name}", "", *_table(x, len(done))]
    return "\n".join(lines) + "\n"
