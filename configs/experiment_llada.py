"""`make experiment`'s Whisper-LLaDA: `experiment_llama`'s model made bidirectional (mask token
<empty_output>, id 16) with the masked-diffusion loss, as `demo_llada` is made from `demo_llama`."""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  ar = config_files.load("experiment_llama", TrainConfig)
  lm = dataclasses.replace(ar.model.lm, causal=False, mask_id=16)
  return dataclasses.replace(
      ar, model=dataclasses.replace(ar.model, lm=lm), objective="diffusion",
      optimizer=dataclasses.replace(ar.optimizer, warmup_steps=300),
      steps=3000, log_every=75, eval_every=750, save_every=750)
