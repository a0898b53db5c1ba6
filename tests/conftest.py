"""Test set-up: 8 simulated CPU devices, so sharded code is exercised on one CPU."""

import os

# Must happen before jax is imported anywhere: XLA reads the flag once, at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
