"""`make experiment`'s Whisper-LLaMA: `demo_llama` with all 30 SmolLM2 layers under LoRA (q/k/v,
r 8, α 32) instead of 2 fine-tuned ones, trained 6× longer at half the learning rate (hours on a
CPU)."""

import dataclasses

from llada_jax import config_files
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  demo = config_files.load("demo_llama", TrainConfig)
  lm = dataclasses.replace(demo.model.lm, n_layers=30)
  return dataclasses.replace(
      demo, model=dataclasses.replace(demo.model, lm=lm), full_finetune=False,
      freeze_embeddings=False,
      optimizer=dataclasses.replace(demo.optimizer, peak_lr=1e-4, warmup_steps=600),
      steps=6000, log_every=150, eval_every=1500, save_every=1500)
