"""llada-jax: Whisper-LLaDA (audio-conditioned diffusion LLM for ASR and deliberation) in JAX/Flax
NNX.

    import llada_jax
    t = llada_jax.open_transcriber("ckpt/whisper-llada")      # any converted checkpoint
    texts = t(["a.flac", "b.flac"])
    lm = llada_jax.load("ckpt/llada-8b")                      # the NNX model of a checkpoint
    out = llada_jax.generate(lm, prompt_ids, steps=128, gen_length=128, block_length=32)
"""

# Decoding (one jitted loop per call) and its settings
from llada_jax.decoding import (
    DeliberationSettings,
    DiffusionSettings,
    GreedySettings,
    decode,
    deliberate,
    generate,
    greedy,
    whisper_greedy,
)

# Transcription: audio in, text out
from llada_jax.inference import LLaDASettings, Transcriber, WhisperSettings
from llada_jax.inference import open as open_transcriber

# Checkpoints
from llada_jax.models.checkpoint import load

# Configs
from llada_jax.models.config import (
    LMConfig,
    LoRAConfig,
    QFormerConfig,
    WhisperConfig,
    WhisperLLaDAConfig,
)

__all__ = [
    "DeliberationSettings", "DiffusionSettings", "GreedySettings", "decode", "deliberate",
    "generate", "greedy", "whisper_greedy",
    "LLaDASettings", "Transcriber", "WhisperSettings", "open_transcriber",
    "load",
    "LMConfig", "LoRAConfig", "QFormerConfig", "WhisperConfig", "WhisperLLaDAConfig",
]
