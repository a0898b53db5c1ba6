"""llada-jax: Whisper-LLaDA (audio-conditioned diffusion LLM for ASR and deliberation) in JAX/Flax
NNX.

    import llada_jax
    t = llada_jax.open_transcriber("ckpt/whisper-llada")      # any converted checkpoint
    texts = t(["a.flac", "b.flac"])
    lm = llada_jax.load("ckpt/llada-8b")                      # the NNX model of a checkpoint
    out = llada_jax.generate(lm, prompt_ids, steps=128, gen_length=128, block_length=32)

The names below load on first use (PEP 562): importing a light sub-module such as
`llada_jax.data.audio` (tools/make_corpus.py and its worker processes) or the package itself costs
no JAX, Flax or orbax start-up until a model, a decoder or a transcriber is asked for.
"""

from __future__ import annotations

import importlib
import typing as tp

# name → the module that defines it (and the name there, where it differs)
_EXPORTS = {
    # Decoding (one jitted loop per call) and its settings
    "DeliberationSettings": "llada_jax.decoding",
    "DiffusionSettings": "llada_jax.decoding",
    "GreedySettings": "llada_jax.decoding",
    "decode": "llada_jax.decoding",
    "deliberate": "llada_jax.decoding",
    "generate": "llada_jax.decoding",
    "greedy": "llada_jax.decoding",
    "whisper_greedy": "llada_jax.decoding",
    # Transcription: audio in, text out
    "LLaDASettings": "llada_jax.inference",
    "Transcriber": "llada_jax.inference",
    "WhisperSettings": "llada_jax.inference",
    "open_transcriber": ("llada_jax.inference", "open"),
    # Checkpoints
    "load": "llada_jax.models.checkpoint",
    # Configs
    "LMConfig": "llada_jax.models.config",
    "LoRAConfig": "llada_jax.models.config",
    "QFormerConfig": "llada_jax.models.config",
    "WhisperConfig": "llada_jax.models.config",
    "WhisperLLaDAConfig": "llada_jax.models.config",
}

__all__ = [
    "DeliberationSettings", "DiffusionSettings", "GreedySettings", "decode", "deliberate",
    "generate", "greedy", "whisper_greedy",
    "LLaDASettings", "Transcriber", "WhisperSettings", "open_transcriber",
    "load",
    "LMConfig", "LoRAConfig", "QFormerConfig", "WhisperConfig", "WhisperLLaDAConfig",
]


def __getattr__(name: str):
  where = _EXPORTS.get(name)
  if where is None:
    raise AttributeError(f"module 'llada_jax' has no attribute {name!r}")
  module, attr = (where, name) if isinstance(where, str) else where
  value = getattr(importlib.import_module(module), attr)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})


if tp.TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
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
  from llada_jax.inference import LLaDASettings, Transcriber, WhisperSettings
  from llada_jax.inference import open as open_transcriber
  from llada_jax.models.checkpoint import load
  from llada_jax.models.config import (
    LMConfig,
    LoRAConfig,
    QFormerConfig,
    WhisperConfig,
    WhisperLLaDAConfig,
  )
