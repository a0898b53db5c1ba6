"""The `paper` run on a TPU v5p-32 slice (16 chips, 95 GB HBM each): the paper's global batch of
32 as two rows per chip, remat on, `lora_dp` sharding: the frozen weights whole on every chip (no
weight all-gathers in the step), LoRA + Q-Former Adam moments ZeRO-split over the 16.
`tools/plan.py` puts 4 rows per device under lora_dp at 59.0 GiB on (1, 8, 1) (a CPU upper bound;
the whole weights do not depend on the fsdp size), so two fit."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 16, 1), batch_size=32,
                             remat=True, sharding="lora_dp")
