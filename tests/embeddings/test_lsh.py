"""LSH: the static-shape JAX path equals the dict-bucket reference, and recall grows with the tables."""

import jax.numpy as jnp
import numpy as np
import pytest

from research.embeddings import lsh
from research.embeddings.index import Index
from research.embeddings.similarity import exact_search_reference
from research.embeddings.synthetic import clustered_vectors


@pytest.fixture(scope="module")
def data():
    return clustered_vectors(4000, 32, num_queries=100, points_per_center=40, seed=5)


def recall_at_10(found, truth):
    return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])


def test_equals_reference_including_the_budget_cut(data):
    database, queries = data
    # 6 bits over 4000 vectors: ~60 per bucket, far over the budget of 16, so the cut decides most candidates.
    config = lsh.LSHConfig(num_tables=4, num_bits=6, num_probes=3, max_candidates_per_table=16, seed=2)
    index = Index(32, method="lsh", **vars(config))
    index.add(database)
    scores, ids = index.search(queries[:20], 10)
    ref_scores, ref_rows = lsh.search_reference(queries[:20], database, lsh.hyperplanes(config, 32), config, 10)
    np.testing.assert_array_equal(ids, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_bucket_sizes_really_exceed_the_budget(data):
    database, _ = data
    config = lsh.LSHConfig(num_tables=4, num_bits=6, num_probes=3, max_candidates_per_table=16, seed=2)
    sorted_codes, _ = lsh.build_tables(database, lsh.hyperplanes(config, 32), config)
    assert np.bincount(sorted_codes[0]).max() > 16  # else the test above would not exercise the cut


def test_fewer_candidates_than_k_reports_missing():
    database, queries = clustered_vectors(500, 16, num_queries=5, points_per_center=500, seed=0)
    index = Index(16, method="lsh", num_tables=1, num_bits=4, num_probes=1, max_candidates_per_table=3)
    index.add(database)
    scores, ids = index.search(queries, 5)
    assert scores.shape == ids.shape == (5, 5)
    assert np.all(ids[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
    assert np.all(ids[:, :3] >= 0)


@pytest.mark.parametrize("num_probes", [1, 3])
def test_recall_rises_with_tables(data, num_probes):
    database, queries = data
    _, truth = exact_search_reference(queries, database, 10)
    recalls = []
    for tables in (1, 4, 16):
        index = Index(32, method="lsh", num_tables=tables, num_bits=10, num_probes=num_probes, seed=1)
        index.add(database)
        recalls.append(recall_at_10(index.search(queries, 10)[1], truth))
    assert recalls[0] < recalls[1] < recalls[2], recalls
    assert recalls[2] > 0.8, recalls  # 16 tables find most neighbours on clustered data


def test_probe_codes_flip_the_least_confident_bits():
    config = lsh.LSHConfig(num_tables=1, num_bits=4, num_probes=3)
    planes = jnp.eye(4)  # projections are the query's own coordinates
    codes = np.asarray(lsh.probe_codes(jnp.array([[0.5, -0.01, 2.0, 0.1]]), planes, config))
    # own code: bits 0 and 2 and 3 set = 0b1101; least confident: bit 1 (|-0.01|), then bit 3 (|0.1|)
    np.testing.assert_array_equal(codes, [[[0b1101, 0b1111, 0b0101]]])


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_bits=31), "num_bits=31 must be in \\[1, 30\\]"),
        (dict(num_tables=0), "num_tables=0"),
        (dict(num_bits=4, num_probes=6), "num_probes=6 must be in \\[1, num_bits \\+ 1 = 5\\]"),
        (dict(max_candidates_per_table=0), "max_candidates_per_table=0"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Index(8, method="lsh", **options)
