"""The paper's Whisper-LLaDA: whisper-large-v3 + window Q-Former (dropout 0.1) + LLaDA-8B-Instruct
+ LoRA (q/k/v, r 8, α 32), trained as Diffusion-ASR's configs/config.yaml and runner.py do:
batch 4 per GPU × 8 GPUs, 120 epochs × 3000 iterations with the cosine over all 360k steps, no
gradient clipping, validation and a checkpoint every epoch (the best by validation loss is kept),
raw LibriSpeech text with each 4-row group EOS-padded to its longest transcript. Their fp16 AMP is
bf16 here, with float32 master weights.

    llada-jax train --config configs/paper.py --workdir runs/paper --set \
        data.train=LibriSpeech/train-960 data.dev=LibriSpeech/dev-other \
        init_whisper=ckpt/whisper-large-v3 init_lm=ckpt/llada-8b
"""

from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.train.config import DataConfig, OptimizerConfig, TrainConfig


def config() -> TrainConfig:
  return TrainConfig(
      model=WhisperLLaDAConfig.paper(), objective="diffusion", weighting="paper",
      optimizer=OptimizerConfig(peak_lr=3e-5, init_lr=1e-6, end_lr=1e-5, warmup_steps=3000,
                                weight_decay=0.05, grad_clip=0.0, cosine_from="start"),
      data=DataConfig(text_form="raw", response_len=128, response_eos="group_max", pad_group=4),
      remat="full", batch_size=32, steps=120 * 3000, eval_every=3000, save_every=3000)
