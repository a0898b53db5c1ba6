"""Audio in, text out: a converted checkpoint + typed settings as a `Transcriber`."""

from llada_jax.inference.llada import LLaDASettings, LLaDATranscriber
from llada_jax.inference.transcriber import (
           DurationError,
           Transcriber,
           UtteranceError,
           check_max_duration,
)
from llada_jax.inference.whisper import ModelError, WhisperSettings, WhisperTranscriber
from llada_jax.parallel.placement import Placement, PlacementError

__all__ = ["DurationError", "LLaDASettings", "LLaDATranscriber", "ModelError", "Placement",
           "PlacementError", "Transcriber", "UtteranceError", "WhisperSettings",
           "WhisperTranscriber", "check_max_duration"]
