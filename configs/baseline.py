"""The paper's Whisper-LLaMA baseline: the `paper` run with Llama-3.1-8B (causal) and the
next-token loss (its responses end with an appended EOS: the model must learn to stop)."""

import dataclasses

from llada_jax import config_files
from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  paper = config_files.load("paper", TrainConfig)
  return dataclasses.replace(paper, model=WhisperLLaDAConfig.baseline(), objective="ar",
                             data=dataclasses.replace(paper.data, response_eos="appended"))
