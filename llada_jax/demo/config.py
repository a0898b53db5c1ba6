"""The demo's run config: the corpus it synthesizes, the two training runs it chains (each a
TrainConfig in configs/, trained exactly as written there, with only paths set by the demo) and the
decoding systems it evaluates. `configs/demo.py` is `make demo`; `tools/demo.py` runs it."""

from __future__ import annotations

import dataclasses

from llada_jax.config_files import ConfigError


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  llama: str = "demo_llama"  # the Whisper-LLaMA's TrainConfig (a name in configs/ or a file)
  llada: str = "demo_llada"  # the Whisper-LLaDA's TrainConfig
  # The LLaDA starts from the trained Whisper-LLaMA (its Q-Former and LM, made bidirectional):
  # the AR→diffusion adaptation of Dream / DiffuLLaMA, with the audio alignment learned once.
  llada_from_ar: bool = True
  train_set: tuple[str, ...] = ()  # extra `--set`s for both runs (the smoke check's schedule)
  # The espeak-ng corpus (tools/make_corpus.py)
  num_train: int = 3000
  num_dev: int = 32
  num_test: int = 100  # with 60, one looping first-pass hypothesis carried the whole gain
  max_words: int = 12  # ≤ ~6 s of espeak-ng speech: fits the runs' data.mel_frames
  vocab_size: int | None = 1000  # closed vocabulary: every test word is heard in training
  # Decoding
  gen_length: int = 24
  decode_steps: int = 24
  block_length: int = 8
  eval_batch: int = 8
  steps_sweep: tuple[int, ...] = (6, 12)
  ratio_sweep: tuple[float, ...] = (0.1, 0.5)

  def __post_init__(self):
    for name in ("num_train", "num_dev", "num_test", "max_words", "gen_length", "decode_steps",
                 "block_length", "eval_batch"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name}={getattr(self, name)}: must be ≥ 1")
    if self.gen_length % self.block_length:
      raise ConfigError(f"gen_length={self.gen_length} is not a multiple of block_length="
                        f"{self.block_length}")
