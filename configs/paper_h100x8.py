"""The `paper` run on one node of 8 H100s (80 GB): the authors' 4 rows per GPU, the weights' model
dimension FSDP-sharded over the 8 GPUs, every LM block rematerialised. `tools/plan.py` puts the
per-device peak at 25.4 GB (benchmarks/RESULTS.md)."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 8, 1), batch_size=32,
                             remat=True)
