"""What crosses the inference boundary: one fixed-shape batch of audio for `Transcriber.transcribe`.

The data pipeline's batches (`data.pipeline.AudioBatches`) carry more (references, speakers,
decoding errors, epoch and step) for the evaluation around the model; `AudioBatch.from_pipeline`
keeps what a transcriber reads.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import numpy as np


@dataclasses.dataclass(frozen=True)
class AudioBatch:
  """B rows of 16 kHz audio, padded to one width S. Padding rows have valid False, id "" and
  index -1; a transcriber returns one result per row, padding included."""

  audio: np.ndarray  # float32 [B, S]
  audio_len: np.ndarray  # int32 [B]: samples of each row's audio (0 for padding)
  valid: np.ndarray  # bool [B]: False for padding rows (and rows not to transcribe)
  ids: list[str]  # [B]: utterance ids (keys of per-utterance random streams), "" for padding
  index: np.ndarray  # int64 [B]: each row's position in the input, -1 for padding
  # [B] deliberation's first-pass texts (None where missing); None for other transcribers
  hypothesis: list[str | None] | None = None

  def __post_init__(self):
    b = len(self.ids)
    if self.audio.ndim != 2 or self.audio.shape[0] != b:
      raise ValueError(f"AudioBatch.audio of shape {self.audio.shape}: expected [{b}, samples]")
    for name in ("audio_len", "valid", "index"):
      if getattr(self, name).shape != (b,):
        raise ValueError(f"AudioBatch.{name} of shape {getattr(self, name).shape}: expected "
                         f"[{b}]")
    if self.hypothesis is not None and len(self.hypothesis) != b:
      raise ValueError(f"AudioBatch.hypothesis: {len(self.hypothesis)} texts for {b} rows")

  def __len__(self) -> int:
    return len(self.ids)

  @classmethod
  def from_pipeline(cls, batch: tp.Mapping[str, tp.Any],
                    hypothesis: tp.Sequence[str | None] | None = None) -> AudioBatch:
    """The rows of a pipeline batch (a dict of `data.pipeline.AudioBatches`) a transcriber reads;
    `hypothesis`: deliberation's first-pass texts, one per row."""
    return cls(audio=np.asarray(batch["audio"], np.float32),
               audio_len=np.asarray(batch["audio_len"]), valid=np.asarray(batch["valid"], bool),
               ids=list(batch["ids"]), index=np.asarray(batch["index"]),
               hypothesis=None if hypothesis is None else list(hypothesis))
