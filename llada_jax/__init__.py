"""llada-jax: Whisper-LLaDA (audio-conditioned diffusion LLM for ASR and deliberation) in JAX/Flax NNX."""

from llada_jax.checkpoint import load
from llada_jax.decoding import generate

__all__ = ["generate", "load"]
