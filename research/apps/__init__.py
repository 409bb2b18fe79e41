"""Test-time applications built on the models and the sampler: retrieval-augmented generation (retrieval.py),
and in time judges and agents."""
