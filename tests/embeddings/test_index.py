"""The Index API: ids, save/load, sharding over 8 fake CPU devices, and every bad input."""

import json

import jax
import numpy as np
import pytest

from research.embeddings.index import ARRAYS_FILE, METADATA_FILE, Index
from research.embeddings.similarity import exact_search_reference
from research.embeddings.synthetic import clustered_vectors

DIM = 24
METHOD_OPTIONS = {
    "exact": dict(chunk_size=256),
    "approx": dict(chunk_size=256, recall_target=0.9),
    # Small buckets budget (8 per table) so the cut matters, and sharding must reproduce it exactly.
    "lsh": dict(num_tables=6, num_bits=7, num_probes=3, max_candidates_per_table=8, seed=4),
}


@pytest.fixture(scope="module")
def data():
    return clustered_vectors(2003, DIM, num_queries=30, points_per_center=40, seed=7)  # 2003: ragged shards


@pytest.fixture(scope="module")
def mesh():
    return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",))


def make_index(method, database, mesh=None, ids=None):
    index = Index(DIM, method=method, mesh=mesh, **METHOD_OPTIONS[method])
    index.add(database, ids)
    return index


def test_exact_index_returns_ids_of_the_true_neighbours(data):
    database, queries = data
    ids = 1000 + 3 * np.arange(len(database))
    scores, found = make_index("exact", database, ids=ids).search(queries, 5)
    ref_scores, ref_rows = exact_search_reference(queries, database, 5)
    np.testing.assert_array_equal(found, ids[ref_rows])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_adding_in_parts_equals_adding_at_once(data):
    database, queries = data
    whole = make_index("lsh", database)
    parts = make_index("lsh", database[:700])
    parts.add(database[700:])
    for a, b in zip(whole.search(queries, 10), parts.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_single_query_gives_one_row(data):
    database, queries = data
    index = make_index("exact", database)
    scores, ids = index.search(queries[3], 4)
    assert scores.shape == ids.shape == (4,)
    np.testing.assert_array_equal(ids, index.search(queries[3:4], 4)[1][0])


@pytest.mark.parametrize("method", ["exact", "approx", "lsh"])
def test_save_load_round_trip(data, tmp_path, method):
    database, queries = data
    index = make_index(method, database, ids=np.arange(len(database)) * 7)
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert (loaded.dim, loaded.method, loaded.options, len(loaded)) == (DIM, method, index.options, len(database))
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close


@pytest.mark.parametrize("method", ["exact", "approx", "lsh"])
def test_sharded_equals_unsharded(data, mesh, method):
    database, queries = data
    sharded = make_index(method, database, mesh=mesh)
    scores, ids = make_index(method, database).search(queries, 10)
    sharded_scores, sharded_ids = sharded.search(queries, 10)
    assert sharded._device[1][0].sharding.spec[0] == "data"  # rows really live on 8 devices
    np.testing.assert_array_equal(sharded_ids, ids)
    np.testing.assert_allclose(sharded_scores, scores, atol=1e-6)  # matmul blocking differs per shard


def test_sharded_search_with_fewer_rows_than_shards_times_k(mesh):
    database, queries = clustered_vectors(12, DIM, num_queries=3, points_per_center=4, seed=1)
    index = make_index("exact", database, mesh=mesh)  # 2 rows per shard, k = 10
    _, ref_rows = exact_search_reference(queries, database, 10)
    np.testing.assert_array_equal(index.search(queries, 10)[1], ref_rows)


def test_sharded_ties_resolve_like_unsharded(mesh):
    database = np.tile(np.eye(DIM, dtype=np.float32)[:3], (9, 1))  # 27 rows, each vector 9 times
    queries = np.eye(DIM, dtype=np.float32)[:3]
    expected = make_index("exact", database).search(queries, 6)[1]
    np.testing.assert_array_equal(make_index("exact", database, mesh=mesh).search(queries, 6)[1], expected)
    np.testing.assert_array_equal(expected[0], [0, 3, 6, 9, 12, 15])


# --- bad input -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_index(data):
    return make_index("exact", data[0][:50])


def test_query_of_wrong_dimension_names_both(small_index):
    with pytest.raises(ValueError, match=f"query vectors have dimension 7, but the index stores dim={DIM}"):
        small_index.search(np.ones((2, 7)), 3)


def test_k_larger_than_store(small_index):
    with pytest.raises(ValueError, match="k=51 is larger than the number of stored vectors \\(50\\)"):
        small_index.search(np.ones((1, DIM)), 51)


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_k_must_be_positive_integer(small_index, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        small_index.search(np.ones((1, DIM)), k)


def test_adding_wrong_dimension():
    with pytest.raises(ValueError, match=f"vectors have dimension 5, but the index was created with dim={DIM}"):
        Index(DIM).add(np.ones((3, 5)))


def test_adding_nan():
    with pytest.raises(ValueError, match="NaN or infinite"):
        Index(2).add(np.array([[1.0, np.nan]]))


def test_duplicate_ids():
    index = Index(2)
    index.add(np.ones((2, 2)), ids=[4, 5])
    with pytest.raises(ValueError, match="ids must be distinct"):
        index.add(np.ones((1, 2)), ids=[5])
    with pytest.raises(ValueError, match="ids must be 2 integers"):
        index.add(np.ones((2, 2)), ids=[1])


def test_searching_an_empty_index():
    with pytest.raises(ValueError, match="cannot search an empty index"):
        Index(DIM).search(np.ones((1, DIM)), 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="hnsw"), "method must be one of \\('exact', 'lsh', 'approx'\\), got 'hnsw'"),
        (dict(method="exact", num_tables=3), "unknown option\\(s\\) \\['num_tables'\\] for method 'exact'"),
        (dict(method="approx", recall_target=1.5), "recall_target=1.5 must be in \\(0, 1\\]"),
        (dict(method="exact", chunk_size=0), "chunk_size=0 must be >= 1"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Index(DIM, **kwargs)


def test_mesh_without_data_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("model",))
    with pytest.raises(ValueError, match="'data' axis"):
        Index(DIM, mesh=mesh)


def test_load_missing(tmp_path):
    with pytest.raises(ValueError, match=f"{METADATA_FILE} is missing"):
        Index.load(tmp_path / "nowhere")


@pytest.fixture
def saved(small_index, tmp_path):
    small_index.save(tmp_path)
    return tmp_path


def test_load_missing_arrays(saved):
    (saved / ARRAYS_FILE).unlink()
    with pytest.raises(ValueError, match=f"{ARRAYS_FILE} is missing"):
        Index.load(saved)


def test_load_truncated_arrays(saved):
    blob = (saved / ARRAYS_FILE).read_bytes()
    (saved / ARRAYS_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=f"corrupt .*{ARRAYS_FILE}"):
        Index.load(saved)


def test_load_garbled_metadata(saved):
    (saved / METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"corrupt .*{METADATA_FILE}"):
        Index.load(saved)


def test_load_metadata_disagreeing_with_arrays(saved):
    metadata = json.loads((saved / METADATA_FILE).read_text())
    metadata["count"] = 49
    (saved / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="expected float32 vectors \\(49, 24\\)"):
        Index.load(saved)


def test_load_wrong_format(saved):
    metadata = json.loads((saved / METADATA_FILE).read_text())
    metadata["format"] = "something else"
    (saved / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="has format 'something else'"):
        Index.load(saved)


def test_zero_queries_give_empty_results(small_index):
    scores, ids = small_index.search(np.zeros((0, DIM)), 3)
    assert scores.shape == ids.shape == (0, 3)


def test_values_overflowing_float32():
    with pytest.raises(ValueError, match="NaN or infinite values \\(in float32\\)"):
        Index(2).add(np.array([[1e300, 1.0]]))
