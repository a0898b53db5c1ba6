"""The `paper` run on a TPU v5e-16 slice (16 GiB HBM per chip): the global batch of 32 in two
micro-batches, so each chip holds one row; FSDP over the 16 chips, remat on. `tools/plan.py` puts
the per-device peak at 11.4 GB for one row on (1, 16, 1) (benchmarks/RESULTS.md)."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 16, 1), batch_size=32,
                             grad_accum=2, remat=True)
