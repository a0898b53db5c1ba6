"""`make experiment`: the demo with all 30 SmolLM2 layers under LoRA, twice the training audio and
6× the steps (configs/experiment_llama.py, experiment_llada.py): hours on a CPU."""

import dataclasses

from llada_jax import config_files
from llada_jax.demo.config import DemoConfig


def config() -> DemoConfig:
  return dataclasses.replace(config_files.load("demo", DemoConfig), llama="experiment_llama",
                             llada="experiment_llada", num_train=6000)
