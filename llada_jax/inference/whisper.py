"""Greedy Whisper transcription (the first pass) with the JAX model of a converted checkpoint.

Features (log-mel) and the KV-cached greedy loop run in one compiled function per (batch, audio
width). By default every utterance is padded to 30 s, as Whisper was trained and as transformers'
WhisperFeatureExtractor does. `bucketed=True`: a bucket of s seconds feeds the encoder s·100 mel
frames instead of 3000 — faster on a CPU, but off Whisper's training distribution (tiny.en falls
into repetition loops on 1–6 s espeak-ng utterances: 215 % WER bucketed vs 56 % at 30 s in the
demo). Audio over 30 s is cut into overlapping 30 s windows whose transcripts are merged, by
`cascade.Cascade` (the one place long audio is windowed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing as tp
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from llada_jax import decoding
from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.cascade import Cascade
from llada_jax.inference.errors import ModelError
from llada_jax.inference.transcriber import Result, Transcriber
from llada_jax.models import checkpoint as ckpt
from llada_jax.models import features
from llada_jax.models.config import WhisperConfig
from llada_jax.models.features import CHUNK_SAMPLES, HOP, N_FFT
from llada_jax.parallel.placement import Placement

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WhisperSettings:
  bucketed: bool = False  # length buckets with shorter encoder input (see the module docstring)
  bucket_seconds: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0)  # with bucketed; 30 always added
  suppress: bool = True  # Whisper's suppress_tokens / begin_suppress_tokens (from source.json)
  chunk_stride: float = 5.0  # > 30 s audio: seconds of overlap on each side of a 30 s window
  language: str = "en"  # multilingual models: the language token
  # Utterances encoded at a time per data-parallel shard; None: 1 on CPU (the memory-bound
  # attention over 1500 frames is ~2× faster row by row there), the whole batch on accelerators.
  encoder_rows: int | None = None
  max_new_tokens: int | None = None  # default: Whisper's sample_len, half the decoder context


def bucket_widths(seconds: tp.Sequence[float]) -> tuple[int, ...]:
  """Audio widths (samples) for buckets of whole mel frames: a bucket of s seconds holds audio whose
  short log-mel has s·100 frames (`features.num_frames`); the 30 s bucket is Whisper's window."""
  out = set()
  for s in seconds:
    frames = int(round(float(s) * 100))
    frames += frames % 2
    if not 0 < frames <= 3000:
      raise ValueError(f"bucket of {s} s: expected 0 < seconds ≤ 30")
    out.add(CHUNK_SAMPLES if frames == 3000 else frames * HOP - (N_FFT // 2 + 1))
  out.add(CHUNK_SAMPLES)
  return tuple(sorted(out))


class WhisperTranscriber(Transcriber):
  name = "whisper"
  max_seconds = None  # audio over 30 s is transcribed in overlapping 30 s windows

  def __init__(self, checkpoint: str | os.PathLike, settings: WhisperSettings = WhisperSettings(),
               *, batch_size: int = 16, placement: Placement | None = None, dtype: str = "auto",
               attention: str | None = None, merge_lora: bool = True, quantize: str = "none"):
    from tokenizers import Tokenizer

    super().__init__(batch_size, placement or Placement.create())
    s = self.settings = settings
    try:
      config = ckpt.read_config(checkpoint)
    except (ckpt.CheckpointError, ValueError, OSError) as e:
      raise ModelError(f"checkpoint {checkpoint}: {e}") from e
    if not isinstance(config, WhisperConfig):
      raise ModelError(f"WhisperSettings need a converted Whisper checkpoint; {checkpoint} "
                       f"holds a {type(config).__name__}")
    tok_file = Path(checkpoint) / "tokenizer.json"
    if not tok_file.is_file():
      raise ModelError(f"{checkpoint}: no tokenizer.json (convert with tools/convert.py)")
    self.tokenizer = Tokenizer.from_file(str(tok_file))
    self.eos_id = self._special("<|endoftext|>")
    # Whisper's own rule: the multilingual vocabularies have ≥ 51865 entries.
    if config.vocab_size >= 51865:
      names = ["<|startoftranscript|>", f"<|{s.language}|>", "<|transcribe|>", "<|notimestamps|>"]
    else:
      names = ["<|startoftranscript|>", "<|notimestamps|>"]
    self.prompt = [self._special(n) for n in names]
    source_cfg = ckpt.read_source_info(checkpoint).get("config", {})
    if not s.suppress:
      self.suppress, self.begin_suppress = (), ()
    else:
      self.suppress = tuple(int(i) for i in source_cfg.get("suppress_tokens") or ())
      self.begin_suppress = tuple(int(i) for i in source_cfg.get("begin_suppress_tokens") or ())
      if not self.suppress and not self.begin_suppress:
        log.info("%s: no suppress_tokens in source.json; decoding without suppression", checkpoint)
    limit = config.max_target_positions - len(self.prompt) + 1
    self.max_new_tokens = int(s.max_new_tokens or min(config.max_target_positions // 2, limit))
    if not 0 < self.max_new_tokens <= limit:
      raise ModelError(f"WhisperSettings.max_new_tokens={self.max_new_tokens}: this model decodes "
                       f"at most {limit} tokens after its {len(self.prompt)}-token prompt")
    self.buckets = (CHUNK_SAMPLES,) if not s.bucketed else bucket_widths(s.bucket_seconds)
    # Audio over 30 s: overlapping 30 s windows, cut and merged by a cascade of this transcriber
    # alone (built here: it checks the stride before any weights are read).
    self.long_audio = Cascade(self, chunk_stride=float(s.chunk_stride))
    try:
      self._load(checkpoint, dtype=dtype, attention=attention, merge_lora=merge_lora,
                 quantize=quantize)
    except (ckpt.CheckpointError, OSError, ValueError) as e:
      raise ModelError(f"checkpoint {checkpoint}: {e}") from e
    self.config = config
    rows = s.encoder_rows
    if rows is None and jax.default_backend() == "cpu":
      rows = 1
    self.encoder_rows = None if rows is None else max(1, int(rows))
    self.info = {"encoder_input": "bucketed" if s.bucketed else "30s",
                 "buckets_seconds": [round(b / SAMPLE_RATE, 4) for b in self.buckets],
                 "prompt_ids": self.prompt, "eos_id": self.eos_id,
                 "suppressed_tokens": len(self.suppress), "max_new_tokens": self.max_new_tokens,
                 "encoder_rows": self.encoder_rows, "backend": jax.default_backend()}

  def _special(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise ModelError(f"tokenizer.json has no special token {token}")
    return int(i)

  def _decode(self, audio: np.ndarray) -> list[Result]:
    """This process's rows of a batch of audio → their transcripts."""
    local, width = audio.shape
    batch = self.batch_size
    frames = features.num_frames(width)
    graphdef, n_mels, max_new, eos = self._graphdef, self.config.n_mels, self.max_new_tokens, \
        self.eos_id
    suppress, begin, rows = list(self.suppress), list(self.begin_suppress), self.encoder_rows

    def decode(state, audio, prompt):
      model = nnx.merge(graphdef, state)
      mel = features.log_mel(audio, n_mels=n_mels, frames=frames)
      return decoding.whisper_greedy(model, mel, prompt, max_new, eos, suppress_ids=suppress,
                                     begin_suppress_ids=begin, return_probs=True,
                                     encoder_rows=rows)

    p = tp.cast(Placement, self.placement)
    audio = np.asarray(audio, np.float32)
    prompt = np.tile(np.asarray(self.prompt, np.int32), (local, 1))
    key = ("whisper", graphdef, local, width, frames, tuple(self.prompt), max_new, eos,
           self.suppress, self.begin_suppress, rows)
    exe = self.compiled(key, decode, self._state, p.abstract(audio), p.abstract(prompt),
                        in_shardings=(self._state_shardings, p.batch_sharding(2),
                                      p.batch_sharding(2)),
                        out_shardings=(p.batch_sharding(2), p.batch_sharding(2)),
                        what=f"batch {batch} × {frames} mel frames (audio ≤ "
                             f"{width / SAMPLE_RATE:.2f} s)")
    tokens, probs = exe(self._state, p.put(audio), p.put(prompt))
    tokens, probs = p.local(tokens), p.local(probs)
    out = []
    for row, row_probs in zip(tokens, probs):
      n = int(np.argmax(row == self.eos_id)) if (row == self.eos_id).any() else row.shape[0]
      text = self.tokenizer.decode([int(t) for t in row[:n]], skip_special_tokens=True).strip()
      out.append((text, [round(float(x), 6) for x in row_probs[:n]]))
    return out

  def transcribe(self, batch: AudioBatch) -> list[Result | Exception]:
    audio = np.asarray(batch.audio, np.float32)
    if audio.shape[1] <= CHUNK_SAMPLES:
      return self._decode(audio)
    return self.long_audio.transcribe(batch)
