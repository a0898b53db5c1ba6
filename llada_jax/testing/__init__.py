"""Torch references for tests and benchmarks; never imported by the runtime path."""
