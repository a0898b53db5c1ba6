"""`make demo`'s Whisper-LLaDA: the trained Whisper-LLaMA (`demo_llama`; the demo passes it as
`init_model`) made bidirectional, with SmolLM2's <empty_output> (id 16, a special token chat never
uses) as the mask token, trained with the masked-diffusion loss: the AR→diffusion adaptation of
Dream / DiffuLLaMA, which also keeps the audio alignment the AR stage learned. (The paper starts
from LLaDA-8B, which already is a diffusion model.)"""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  ar = config_files.load("demo_llama", TrainConfig)
  lm = dataclasses.replace(ar.model.lm, causal=False, mask_id=16)
  return dataclasses.replace(
      ar, model=dataclasses.replace(ar.model, lm=lm), objective="diffusion",
      optimizer=dataclasses.replace(ar.optimizer, warmup_steps=50),
      steps=500, log_every=12, eval_every=125, save_every=125)
