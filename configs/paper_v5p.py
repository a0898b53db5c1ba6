"""The `paper` run on a TPU v5p-32 slice (16 chips, 95 GB HBM each): the paper's global batch of
32 as two rows per chip, `lora_dp` sharding: the frozen weights whole on every chip (no weight
all-gathers in the step), LoRA + Q-Former Adam moments ZeRO-split over the 16, remat
`dots_saveable` (weight matmul outputs kept, attention scores recomputed). `tools/plan.py --config
paper_v5p --meshes 1,16,1 --per-device-batch 2` puts the per-device peak at 49.7 GiB on the CPU,
an upper bound (benchmarks/RESULTS.md)."""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(config_files.load("paper", TrainConfig), mesh=(1, 16, 1),
                             batch_size=32,
                             remat="dots_saveable", sharding="lora_dp")
