"""Whisper's log-mel spectrogram in JAX, matching transformers' WhisperFeatureExtractor.

The reference (transformers, torch path) pads/trims each utterance to 30 s of 16 kHz audio, takes a
400-point STFT with a periodic Hann window, hop 160, centred with reflect padding, keeps the power
of the first 3000 of its 3001 frames, projects onto Slaney mel filters, then log10(max(x, 1e-10)),
floors at (utterance max − 8) and maps (x + 4) / 4. The utterance max is taken over everything that
reaches the floor, zero padding included, so we take it over the same frames.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.parallel import sharding

N_FFT = 400
HOP = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # 480000
CHUNK_FRAMES = CHUNK_SAMPLES // HOP  # 3000


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
  # Slaney scale: linear below 1 kHz, logarithmic above (transformers'
  # hertz_to_mel(mel_scale="slaney")).
  freq = np.asarray(freq, dtype=np.float64)
  logstep = 27.0 / np.log(6.4)
  return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-300) / 1000.0) * logstep,
                  3.0 * freq / 200.0)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
  mels = np.asarray(mels, dtype=np.float64)
  logstep = np.log(6.4) / 27.0
  return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), 200.0 * mels / 3.0)


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
  """Slaney-normalised triangular filters [n_fft // 2 + 1, n_mels] in float64, as transformers'
  `mel_filter_bank(1 + n_fft // 2, n_mels, 0.0, 8000.0, sr, norm="slaney", mel_scale="slaney")`."""
  n_freq = 1 + n_fft // 2
  mel_freqs = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2)
  filter_freqs = _mel_to_hz(mel_freqs)
  fft_freqs = np.linspace(0, sr // 2, n_freq)
  slopes = filter_freqs[None, :] - fft_freqs[:, None]
  diff = np.diff(filter_freqs)
  down = -slopes[:, :-2] / diff[:-1]
  up = slopes[:, 2:] / diff[1:]
  filters = np.maximum(0.0, np.minimum(down, up))
  filters *= (2.0 / (filter_freqs[2:n_mels + 2] - filter_freqs[:n_mels]))[None, :]
  filters.setflags(write=False)
  return filters


@functools.lru_cache(maxsize=None)
def _hann(n_fft: int) -> np.ndarray:
  # torch.hann_window defaults to periodic: the denominator is N, not N - 1.
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def num_frames(num_samples: int) -> int:
  """Smallest even frame count (≤ 3000) whose log-mel covers `num_samples` as the 30 s one does.

  The last frame reads 40 samples past `frames * 160`, which reflect padding mirrors from inside the
  clip; keeping > 200 zeros after the audio keeps them zero, so the short spectrogram equals the
  first frames of the 30 s one (only the utterance max could differ, and only for audio quieter than
  the −10 floor of the padding)."""
  frames = -(-(int(num_samples) + N_FFT // 2 + 1) // HOP)
  frames += frames % 2  # Whisper's second conv has stride 2
  return min(max(frames, 2), CHUNK_FRAMES)


def pad_or_trim(audio: list[np.ndarray] | np.ndarray, num_samples: int = CHUNK_SAMPLES
                ) -> tuple[np.ndarray, np.ndarray]:
  """Variable-length 1-D arrays → (float32 [B, num_samples], zero-padded or trimmed; int32
  lengths)."""
  if isinstance(audio, np.ndarray) and audio.ndim == 1:
    audio = [audio]
  out = np.zeros((len(audio), num_samples), np.float32)
  lengths = np.zeros((len(audio),), np.int32)
  for i, a in enumerate(audio):
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 1:
      raise ValueError(f"utterance {i}: expected mono 1-D audio, got shape {a.shape}")
    n = min(a.shape[0], num_samples)
    out[i, :n] = a[:n]
    lengths[i] = n
  return out, lengths


@functools.partial(jax.jit, static_argnames=("n_mels", "frames"))
def log_mel(audio: jax.Array, n_mels: int = 80, frames: int | None = None) -> jax.Array:
  """Whisper log-mel: audio float [B, N] at 16 kHz → float32 [B, n_mels, frames].

  `frames=None` pads/trims to 30 s → 3000 frames, exactly as Whisper was trained. An even `frames`
  pads/trims to `frames * 160` samples instead: cheaper for short audio on CPU, identical to the
  first `frames` frames of the 30 s version when the audio fits (see `num_frames`).
  """
  if audio.ndim != 2:
    raise ValueError(f"log_mel: expected audio [B, N], got shape {audio.shape}")
  frames = CHUNK_FRAMES if frames is None else frames
  if frames <= 0 or frames % 2:
    raise ValueError(f"log_mel: frames must be a positive even number, got {frames}")
  # Every row is independent; XLA does not split the FFT over the batch, so run it per shard.
  return sharding.map_rows(functools.partial(_log_mel, n_mels=n_mels, frames=frames), audio)


def _log_mel(audio: jax.Array, *, n_mels: int, frames: int) -> jax.Array:
  num_samples = frames * HOP
  audio = audio.astype(jnp.float32)
  n = audio.shape[1]
  if n >= num_samples:
    audio = audio[:, :num_samples]
  else:
    audio = jnp.pad(audio, ((0, 0), (0, num_samples - n)))
  half = N_FFT // 2
  padded = jnp.pad(audio, ((0, 0), (half, half)), mode="reflect")
  # The STFT yields frames + 1 frames; Whisper drops the last, so we never compute it.
  starts = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
  windows = padded[:, starts] * _hann(N_FFT)  # [B, frames, n_fft]
  spec = jnp.fft.rfft(windows, n=N_FFT, axis=-1)
  power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2  # [B, frames, n_freq]
  filters = jnp.asarray(mel_filters(n_mels), dtype=jnp.float32)
  # HIGHEST: on TPU/GPU the default matmul precision (bf16 passes) is visibly off in the log domain.
  mel = jnp.einsum("bfk,km->bmf", power, filters, precision=jax.lax.Precision.HIGHEST)
  log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
  peak = jnp.max(log_spec, axis=(1, 2), keepdims=True)
  log_spec = jnp.maximum(log_spec, peak - 8.0)
  return (log_spec + 4.0) / 4.0
