"""Audio files → mono float32 at the model's sample rate.

libsndfile (`soundfile`) reads first: wav, flac, ogg/vorbis/opus, aiff, and mp3 where it was built
with it (1.1+), checked against the frame count in the header. What it cannot open (m4a/aac, webm,
wma, … and mp3 with an older libsndfile) is decoded by FFmpeg through PyAV (`av`) — except the
extensions libsndfile owns (LIBSNDFILE_ONLY), where its failure means a corrupt file, not a format
it lacks. Every failure is an `AudioError` that names the file, so a data pipeline can turn one bad
utterance into an error record instead of a crash.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
# Samples (all channels) that libsndfile decodes per read: 16 MiB of float32.
BLOCK_SAMPLES = 1 << 22
# libsndfile's own formats: a file of these that it cannot read is broken, and FFmpeg would guess
# at its bytes rather than say so.
LIBSNDFILE_ONLY = (".wav", ".flac", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64",
                   ".rf64", ".voc", ".sph", ".nist")


class AudioError(ValueError):
  """An audio file is missing, unreadable, truncated, empty or not audio at all."""


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise AudioError(f"{path}: no such file")
  if os.path.isdir(path):
    raise AudioError(f"{path}: is a folder, not an audio file")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: empty file (0 bytes)")


def _ffmpeg_may_read(path: str) -> bool:
  return os.path.splitext(path)[1].lower() not in LIBSNDFILE_ONLY


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Any libsndfile format (flac, wav, ogg, mp3; 8/16/24-bit or float; any rate) or, through
  PyAV, any FFmpeg one (m4a, aac, webm, …) → float32 [n] at `sr`."""
  path = os.fspath(path)
  _check_file(path)
  try:
    data, rate, frames = _read_sndfile(path)
  except (sf.LibsndfileError, RuntimeError, OSError) as e:
    if not _ffmpeg_may_read(path):
      # libsndfile says "Format not recognised" both for non-audio bytes and for a FLAC holding
      # zero samples, so the message mentions both.
      raise AudioError(f"{path}: not readable as audio (corrupt, not audio, or a FLAC with no "
                       f"samples): {e}") from e
    data, rate = _decode_ffmpeg(path, libsndfile_error=e)
  else:
    # A truncated FLAC/wav/mp3 decodes its intact part without an error; the header still has
    # the full count (a FLAC with an unknown count reads back 2**63 - 1).
    if 0 < frames < 2**40 and data.shape[0] < frames:
      raise AudioError(f"{path}: truncated: header says {frames} frames, decoded "
                       f"{data.shape[0]}")
  if data.shape[0] == 0:
    raise AudioError(f"{path}: no samples")
  if not np.isfinite(data).all():
    raise AudioError(f"{path}: non-finite samples (NaN or inf)")
  mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
  return resample(mono, rate, sr)


def _read_sndfile(path: str) -> tuple[np.ndarray, int, int]:
  """(float32 [n, channels], sample rate, the header's frame count) through libsndfile.

  Read in blocks until the data ends, not in one array of the header's size: `sf.read` allocates
  what the header claims, so a forged FLAC frame count (36 bits) asked for 256 GiB."""
  with sf.SoundFile(path) as f:
    block = max(1, BLOCK_SAMPLES // f.channels)
    parts = []
    while True:
      part = f.read(block, dtype="float32", always_2d=True)
      if part.shape[0]:
        parts.append(part)
      if part.shape[0] < block:
        break
    data = np.concatenate(parts) if parts else np.zeros((0, f.channels), np.float32)
    return data, f.samplerate, f.frames


def _decode_ffmpeg(path: str, libsndfile_error: Exception) -> tuple[np.ndarray, int]:
  """The first audio stream of `path` through PyAV → (float32 [n, channels], sample rate)."""
  try:
    import av
  except ImportError as e:
    raise AudioError(f"{path}: libsndfile cannot read it ({libsndfile_error}) and PyAV, which "
                     f"decodes mp3/m4a/…, is not installed (pip install av)") from e
  try:
    with av.open(path, metadata_errors="ignore") as container:
      if not container.streams.audio:
        raise AudioError(f"{path}: no audio stream (FFmpeg reads it as "
                         f"{container.format.name})")
      stream = container.streams.audio[0]
      # float planar at the stream's own layout and rate: [channels, n] per frame, whatever the
      # codec's sample format
      to_float = av.AudioResampler(format="fltp")
      parts, shape = [], None
      for frame in container.decode(stream):
        # A corrupt mp3 can switch channel count or rate mid-stream; the resampler passes such
        # frames through unchanged once its first frame needed no conversion.
        if shape is None:
          shape = (len(frame.layout.channels), frame.sample_rate)
        elif (len(frame.layout.channels), frame.sample_rate) != shape:
          raise AudioError(f"{path}: corrupt: the audio stream changes from {shape[0]} channel(s) "
                           f"at {shape[1]} Hz to {len(frame.layout.channels)} at "
                           f"{frame.sample_rate} Hz")
        parts += [g.to_ndarray() for g in to_float.resample(frame)]
      parts += [g.to_ndarray() for g in to_float.resample(None)]
      rate = shape[1] if shape else 0
  except (av.FFmpegError, OSError, ValueError, EOFError) as e:
    if isinstance(e, AudioError):
      raise
    raise AudioError(f"{path}: not readable as audio (libsndfile: {libsndfile_error}; FFmpeg: "
                     f"{e})") from e
  if not parts or rate <= 0:
    raise AudioError(f"{path}: no samples")
  return np.ascontiguousarray(np.concatenate(parts, axis=1).T, np.float32), rate


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
  """Samples at 16 kHz of an audio file, from its header (FFmpeg-only formats: decoded, since
  their headers estimate); an AudioError naming the file."""
  path = os.fspath(path)
  _check_file(path)
  try:
    info = sf.info(path)
  except (sf.LibsndfileError, RuntimeError, OSError) as e:
    if not _ffmpeg_may_read(path):
      raise AudioError(f"{path}: not readable as audio: {e}") from e
    return int(load_audio(path).shape[0])
  # FLAC may leave the total unknown (0, read back as 2**63 - 1): then decode once to learn it.
  if 0 < info.frames < 2**40:
    return -(-info.frames * SAMPLE_RATE // info.samplerate)
  return int(load_audio(path).shape[0])
