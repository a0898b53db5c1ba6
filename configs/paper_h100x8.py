"""The `paper` run on one node of 8 H100s (80 GB): the authors' 4 rows per GPU, every LM block
rematerialised, `lora_dp` sharding: the frozen bf16 LLaDA-8B and Whisper encoder whole on every GPU
(no weight all-gathers in the step; full_fsdp gathers each layer 3× per step), LoRA + Q-Former Adam
moments ZeRO-split over the 8. `tools/plan.py --meshes 1,8,1 --set sharding=lora_dp` puts the
per-device peak at 59.0 GiB on the CPU, an upper bound (it counts float32 copies of the bf16 weights
that a GPU does not make; full_fsdp: 25.4 GB, docs/training.md)."""

import dataclasses

from llada_jax import configlib
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig), mesh=(1, 8, 1), batch_size=32,
                             remat=True, sharding="lora_dp")
