r"""Approximate nearest-neighbour search: recall@k and queries/s of every method, against our exact search.

  python -m research.bench.ann                      # n = 100k, about a minute on 2 CPU cores
  python -m research.bench.ann --n 1000000 --dim 128 --queries 1000 --k 10

Data: the clustered synthetic set of research/embeddings/synthetic.py (a seeded
Gaussian mixture, ~100 vectors per center; queries are fresh draws). Ground
truth is our exact search. For each setting of each method: build the index
(time reported), search once to compile and warm up, then the best of
--repeats timed searches of all queries; recall@k is the fraction of the true
k nearest ids found. speedup = qps / exact_qps, both measured in this run;
exact search is timed first and again last, and the faster timing is used.

Methods: exact (ours), approx (lax.approx_max_k; exact on CPU), lsh over a sweep
of tables x bits x probes x per-table budget, and faiss (IndexFlatIP, and
IndexIVFFlat over nprobe) as the peer when faiss-cpu is installed (`ann` extra).
The last line is one JSON object.
"""

import math
import time

import jax
import numpy as np
from absl import app, flags

from research.bench import common
from research.embeddings.index import Index
from research.embeddings.synthetic import clustered_vectors

flags.DEFINE_integer("n", 100_000, "Stored vectors.")
flags.DEFINE_integer("dim", 128, "Vector dimension.")
flags.DEFINE_integer("queries", 1000, "Queries per timed search.")
flags.DEFINE_integer("k", 10, "Neighbours per query.")
flags.DEFINE_integer("seed", 0, "Seed of the data set (LSH hyperplanes use seed 0).")
flags.DEFINE_integer("repeats", 3, "Timed searches per setting; the best is reported.")
flags.DEFINE_multi_string(
    "lsh", None, "LSH settings 'tables,bits,probes,budget'; repeat the flag. Default: a sweep sized to --n."
)
flags.DEFINE_multi_float("recall_target", [0.9, 0.99], "approx_max_k recall targets; repeat the flag.")
flags.DEFINE_multi_integer("nprobe", [4, 8, 16, 32], "faiss IVF lists probed per query; repeat the flag.")
flags.DEFINE_bool("faiss", True, "Also time faiss-cpu (needs the `ann` extra).")


def default_lsh_sweep(n: int) -> list[tuple[int, int, int, int]]:
    """(tables, bits, probes, budget): bits ~ log2(n) - 2 keeps a bucket near one cluster's worth of vectors."""
    bits = max(4, round(math.log2(n)) - 2)
    return [
        (8, bits, 4, 32),
        (16, bits, 4, 32),
        (32, bits, 4, 32),
        (16, bits, 8, 64),
        (32, bits, 8, 64),
        (32, bits - 2, 8, 128),
    ]


def parse_lsh_setting(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise app.UsageError(f"--lsh={text!r}: expected four integers 'tables,bits,probes,budget', e.g. 32,18,8,64")
    return tuple(int(p) for p in parts)


def time_search(index, queries, repeats: int) -> tuple[np.ndarray, float]:
    """(ids of the first run, best wall time of `repeats` further runs); the first run compiles and warms up.

    Both our Index and faiss indexes have search(queries, k) -> (scores, ids) returning host numpy arrays,
    so the device work is done when it returns.
    """
    ids = index.search(queries, flags.FLAGS.k)[1]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, flags.FLAGS.k)
        best = min(best, time.perf_counter() - start)
    return ids, best


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def measure_index(method, setting, database, queries, **options):
    f = flags.FLAGS
    start = time.perf_counter()
    index = Index(f.dim, method=method, **options)
    index.add(database)
    index.search(queries[:1], 1)  # builds the device state (LSH tables) outside the timed searches
    build_s = time.perf_counter() - start
    ids, seconds = time_search(index, queries, f.repeats)
    return {"method": method, "setting": setting, "build_s": build_s, "ids": ids, "seconds": seconds}


def faiss_points(database, queries):
    """IndexFlatIP (exact inner product = cosine on unit rows) and IndexIVFFlat over --nprobe."""
    import faiss

    f = flags.FLAGS
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(f.dim)
    flat.add(database)
    points = [_faiss_point("faiss-flat", "IndexFlatIP", flat, queries, time.perf_counter() - start)]
    del flat
    nlist = max(1, round(4 * math.sqrt(f.n)))  # the usual 4 * sqrt(n) inverted lists
    start = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(f.dim), f.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(f.seed)
    ivf.train(database[rng.choice(f.n, min(f.n, 40 * nlist), replace=False)])  # faiss asks for >= 39 per list
    ivf.add(database)
    build_s = time.perf_counter() - start
    for nprobe in f.nprobe:
        ivf.nprobe = nprobe
        points.append(_faiss_point("faiss-ivf", f"nlist={nlist} nprobe={nprobe}", ivf, queries, build_s))
    return points


def _faiss_point(method, setting, index, queries, build_s):
    ids, seconds = time_search(index, queries, flags.FLAGS.repeats)
    return {"method": method, "setting": setting, "build_s": build_s, "ids": ids, "seconds": seconds}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("faiss skipped: install the `ann` extra (pip install -e .[ann]) for the faiss comparison")
        return False
    return True


def main(argv):
    del argv
    f = flags.FLAGS
    sweep = [parse_lsh_setting(s) for s in f.lsh] if f.lsh else default_lsh_sweep(f.n)
    database, queries = clustered_vectors(f.n, f.dim, num_queries=f.queries, seed=f.seed)
    exact = measure_index("exact", "chunk_size=4096", database, queries)
    truth = exact["ids"]
    points = [exact]
    for target in f.recall_target:
        points.append(measure_index("approx", f"recall_target={target}", database, queries, recall_target=target))
    for tables, bits, probes, budget in sweep:
        setting = f"tables={tables} bits={bits} probes={probes} budget={budget}"
        options = dict(num_tables=tables, num_bits=bits, num_probes=probes, max_candidates_per_table=budget)
        points.append(measure_index("lsh", setting, database, queries, **options))
    if f.faiss and faiss_available():
        points += faiss_points(database, queries)
    # The baseline again, last: on a shared machine a busy spell during the first timing would flatter
    # every speedup. The faster of the two timings is the one every speedup is measured against.
    exact["seconds"] = min(exact["seconds"], measure_index("exact", "", database, queries)["seconds"])

    exact_qps = f.queries / exact["seconds"]
    rows, record_points = [], []
    for p in points:
        qps = f.queries / p["seconds"]
        point = {
            "method": p["method"],
            "setting": p["setting"],
            f"recall_at_{f.k}": recall(p["ids"], truth),
            "qps": qps,
            "speedup": qps / exact_qps,
        }
        record_points.append(point)
        rows.append({**point, "build s": p["build_s"]})
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"n={f.n} dim={f.dim} queries={f.queries} k={f.k}; devices: {device}")
    common.print_table([{k: f"{v:.3f}" if "recall" in k else v for k, v in r.items()} for r in rows])
    common.print_json(
        {"n": f.n, "dim": f.dim, "queries": f.queries, "k": f.k, "exact_qps": exact_qps, "points": record_points}
    )


if __name__ == "__main__":
    app.run(main)
