"""Seconds on a CPU: the tiny test model, 2 s of audio, a 16-token response bucket (tests, CI)."""

from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.train.config import DataConfig, OptimizerConfig, TrainConfig


def config() -> TrainConfig:
  return TrainConfig(
      model=WhisperLLaDAConfig.tiny_test(), dtype="float32", param_dtype="float32",
      optimizer=OptimizerConfig(peak_lr=1e-3, init_lr=1e-4, end_lr=1e-4, warmup_steps=2),
      data=DataConfig(response_len=16, mel_frames=200, wer_examples=0, num_threads=1, prefetch=2),
      mesh=(-1, 1, 1), batch_size=8, steps=4, log_every=1, eval_every=2, save_every=2, keep_last=2)
