"""Test-time reasoning on the sampler: budget forcing, self-consistency, tree of thoughts."""
