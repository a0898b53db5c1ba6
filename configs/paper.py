"""The paper's Whisper-LLaDA: whisper-large-v3 + window Q-Former + LLaDA-8B-Instruct + LoRA (q/k/v,
r 8, α 32), trained with Diffusion-ASR's masked-diffusion objective and hyperparameters (batch 4 per
GPU × 8 GPUs; their fp16 AMP is bf16 here, with float32 master weights).

    python train.py --config paper --workdir runs/paper --set data.train=LibriSpeech/train-960 \
        data.dev=LibriSpeech/dev-other init_whisper=ckpt/whisper-large-v3 init_lm=ckpt/llada-8b
"""

from llada_jax.configs import WhisperLLaDAConfig
from llada_jax.train.config import TrainConfig


def config() -> TrainConfig:
  return TrainConfig(model=WhisperLLaDAConfig.paper(), objective="diffusion", weighting="paper",
                     remat=True, batch_size=32, steps=30000, eval_every=1000, save_every=1000)
