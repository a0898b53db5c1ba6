"""Jitted batch decoding: masked diffusion (LLaDA, Whisper-LLaDA, deliberation) and greedy AR."""

from llada_jax.decoding.ar import greedy
from llada_jax.decoding.diffusion import (DeliberationSettings, DiffusionSettings,
                                          adaptive_gen_length, decode, deliberate, generate)

__all__ = ["DeliberationSettings", "DiffusionSettings", "adaptive_gen_length", "decode",
           "deliberate", "generate", "greedy"]
