"""Jitted batch decoding: masked diffusion (LLaDA, Whisper-LLaDA, deliberation) and greedy AR
(Whisper, Whisper-LLaMA)."""

# Masked diffusion
from llada_jax.decoding.diffusion import (
           MASKING,
           REMASKING,
           STRATEGIES,
           DeliberationSettings,
           DiffusionSettings,
           adaptive_gen_length,
           decode,
           deliberate,
           generate,
)

# Greedy autoregressive
from llada_jax.decoding.greedy_loop import GreedySettings, greedy, whisper_greedy

__all__ = ["MASKING", "REMASKING", "STRATEGIES", "DeliberationSettings", "DiffusionSettings",
           "GreedySettings",
           "adaptive_gen_length", "decode", "deliberate", "generate", "greedy", "whisper_greedy"]
