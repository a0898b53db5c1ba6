"""The `paper` run on a TPU v5e-16 slice (16 GiB HBM per chip): the global batch of 32 in two
micro-batches, so each chip holds one row; `full_fsdp` over the 16 chips (the 16 GB of frozen bf16
LLaDA-8B cannot sit whole on one chip, so `lora_dp` does not fit), remat on. `tools/plan.py` puts
the per-device peak at 11.4 GB for one row on (1, 16, 1) (docs/training.md)."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 16, 1), batch_size=32,
                             grad_accum=2, remat=True, sharding="full_fsdp")
