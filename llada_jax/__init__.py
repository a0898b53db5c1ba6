"""llada-jax: Whisper-LLaDA (audio-conditioned diffusion LLM for ASR and deliberation) in JAX/Flax NNX."""

from llada_jax.checkpoint import load

__all__ = ["load"]
