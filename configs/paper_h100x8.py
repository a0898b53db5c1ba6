"""The `paper` run on one node of 8 H100s (80 GB): the authors' 4 rows per GPU, `lora_dp` sharding:
the frozen bf16 LLaDA-8B and Whisper encoder whole on every GPU (no weight all-gathers in the step;
full_fsdp gathers each layer 3× per step), LoRA + Q-Former Adam moments ZeRO-split over the 8.
Remat `dots_saveable`: each LM layer keeps its weight matmuls' outputs and recomputes only the
attention scores: 545 TFLOP executed per step, not full remat's 719 (llada_jax/train/flops.py).
`python benchmarks/bench_plan.py --set sharding=lora_dp --variants scanned
scanned:remat=dots_saveable` puts the per-device peak at 56.9 GiB (full remat: 45.6 GiB) on the
CPU, an upper bound: it counts float32 copies of the bf16 weights that a GPU does not make
(benchmarks/RESULTS.md)."""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(config_files.load("paper", TrainConfig), mesh=(1, 8, 1), batch_size=32,
                             remat="dots_saveable", sharding="lora_dp")
