"""The `paper` run on a TPU v5p-32 slice (16 chips, 95 GB HBM each): the paper's global batch of
32 as two rows per chip, FSDP over the 16 chips, remat on (4 rows per device plan at 23.1 GB on
(1, 16, 1), benchmarks/RESULTS.md, so two leave room)."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 16, 1), batch_size=32,
                             remat=True)
