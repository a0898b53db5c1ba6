"""The `paper` run on a TPU v5e-16 slice (16 GiB HBM per chip): the global batch of 32 as two rows
per chip, `full_fsdp` over the 16 chips (the 16 GB of frozen bf16 LLaDA-8B cannot sit whole on one
chip, so `lora_dp` does not fit), remat `dots_saveable` (weight matmul outputs kept, attention
scores recomputed). `tools/plan.py --config paper_v5e16 --meshes 1,16,1 --per-device-batch 2` puts
the per-device peak at 10.3 GiB on the CPU (an upper bound; full remat: 5.5 GiB), so the layer scan
needs no micro-batches here (benchmarks/RESULTS.md)."""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(config_files.load("paper", TrainConfig), mesh=(1, 16, 1),
                             batch_size=32,
                             grad_accum=1, remat="dots_saveable", sharding="full_fsdp")
