"""The errors of the inference API, in one module every other one imports (and which imports
nothing of the package)."""


class ModelError(ValueError):
  """The checkpoint cannot serve this transcriber (wrong kind, missing tokenizer, bad settings)."""


class UtteranceError(ValueError):
  """An utterance (or every utterance of a batch) cannot be transcribed: an error record."""


class DurationError(UtteranceError):
  """Audio longer than what a transcriber accepts (too_long="error")."""
