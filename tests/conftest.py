"""Test-wide setup: 8 fake CPU devices, so sharding tests run anywhere.

Must run before jax is imported anywhere in the test session.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
