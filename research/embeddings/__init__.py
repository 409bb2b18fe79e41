"""Embeddings as unit vectors compared by cosine similarity, and an index to search them.

similarity.py  normalize, cosine_similarity, exact_search (chunked running top-k) + numpy reference
approx.py      approx_search: exact scores, lax.approx_max_k selection (approximate on TPU only)
lsh.py         random-hyperplane LSH with multi-probe, in static shapes + a dict-bucket reference
index.py       Index(dim, method=..., mesh=...): add / search / save / load, sharded over `data`
synthetic.py   the clustered data set the tests and research/bench/ann.py use
"""

from research.embeddings.approx import approx_search
from research.embeddings.index import Index
from research.embeddings.lsh import LSHConfig
from research.embeddings.similarity import cosine_similarity, exact_search, normalize

__all__ = ["Index", "LSHConfig", "approx_search", "cosine_similarity", "exact_search", "normalize"]
