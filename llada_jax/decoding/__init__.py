"""Jitted batch decoding: masked diffusion (LLaDA, Whisper-LLaDA, deliberation) and greedy AR."""

from llada_jax.decoding.ar import greedy
from llada_jax.decoding.diffusion import (MASKING, REMASKING, STRATEGIES, DeliberationSettings,
                                          DiffusionSettings,
                                          adaptive_gen_length, decode, deliberate, generate)

__all__ = ["DeliberationSettings", "DiffusionSettings", "adaptive_gen_length", "decode",
           "deliberate", "generate", "greedy"]
from llada_jax.whisper import greedy_decode as whisper_greedy  # noqa: E402  (until the greedy-loop merge)
