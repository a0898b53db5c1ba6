"""Audio in, text out: a converted checkpoint + typed settings as a `Transcriber`.

    t = llada_jax.inference.open("ckpt/whisper-llada", LLaDASettings.paper("semi_ar"))
    texts = t(["a.flac", "b.flac"])
"""

from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import DurationError, ModelError, UtteranceError
from llada_jax.inference.factory import open
from llada_jax.inference.llada import LLaDASettings, LLaDATranscriber
from llada_jax.inference.transcriber import Transcriber, check_max_duration
from llada_jax.inference.whisper import WhisperSettings, WhisperTranscriber
from llada_jax.parallel.placement import Placement, PlacementError

__all__ = ["AudioBatch", "DurationError", "LLaDASettings", "LLaDATranscriber", "ModelError",
           "Placement", "PlacementError", "Transcriber", "UtteranceError", "WhisperSettings",
           "WhisperTranscriber", "check_max_duration", "open"]
