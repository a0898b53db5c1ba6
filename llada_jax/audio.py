"""Audio files → mono float32 at the model's sample rate.

Every failure is an `AudioError` that names the file, so a data pipeline can turn one bad utterance
into an error record instead of a crash.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


class AudioError(ValueError):
  """An audio file is missing, unreadable, truncated, empty or not audio at all."""


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Any libsndfile format (flac, wav, ogg; 8/16/24-bit or float; any rate) → float32 [n] at
  `sr`."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioError(f"{path}: no such file")
  if os.path.isdir(path):
    raise AudioError(f"{path}: is a folder, not an audio file")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: empty file (0 bytes)")
  try:
    header = sf.info(path)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, OSError) as e:
    # libsndfile says "Format not recognised" both for non-audio bytes and for a FLAC holding zero
    # samples, so the message mentions both.
    raise AudioError(f"{path}: not readable as audio (corrupt, not audio, or a FLAC with no "
                     f"samples): {e}") from e
  # A truncated FLAC/wav decodes its intact part without an error; the header still has the full
  # count.
  if header.frames > 0 and data.shape[0] < header.frames:
    raise AudioError(f"{path}: truncated: header says {header.frames} frames, decoded "
                     f"{data.shape[0]}")
  if data.shape[0] == 0:
    raise AudioError(f"{path}: no samples")
  if not np.isfinite(data).all():
    raise AudioError(f"{path}: non-finite samples (NaN or inf)")
  mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
  return resample(mono, rate, sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
  audio = np.asarray(audio, dtype=np.float32)
  if sr_in != sr_out:
    audio = soxr.resample(audio, sr_in, sr_out, quality="VHQ")
  return np.ascontiguousarray(audio, dtype=np.float32)


def int16_to_float32(audio: np.ndarray) -> np.ndarray:
  """PCM int16 (as tensorflow-datasets stores audio) → float32 in [-1, 1), as libsndfile scales
  it."""
  return np.asarray(audio).astype(np.float32) / 32768.0


def float32_to_int16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(audio) * 32768.0), -32768, 32767).astype(np.int16)


def audio_length(path: str | os.PathLike) -> int:
  """Samples at 16 kHz of an audio file, from its header; an AudioError naming the file."""
  try:
    info = sf.info(path)
    # FLAC may leave the total unknown (0, read back as 2**63 - 1): then decode once to learn it.
    if 0 < info.frames < 2**40:
      return -(-info.frames * SAMPLE_RATE // info.samplerate)
    return int(load_audio(path).shape[0])
  except (sf.LibsndfileError, RuntimeError, OSError) as e:
    raise AudioError(f"{path}: not readable as audio: {e}") from e
