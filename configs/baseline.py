"""The paper's Whisper-LLaMA baseline: the `paper` run with Llama-3.1-8B (causal) and the
next-token loss."""

import dataclasses

from llada_jax import configlib
from llada_jax.configs import WhisperLLaDAConfig
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return dataclasses.replace(configlib.load("paper", TrainConfig),
                             model=WhisperLLaDAConfig.baseline(), objective="ar")
