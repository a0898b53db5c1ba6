"""Long audio: overlapping 30 s windows, and one transcript from the windows' transcripts.

Pure functions of sample counts and word lists (no model), so the chunking and merging rules are
tested on their own. `Windowing` is the one rule both places that cut long audio follow: Whisper's
own long-audio path (`whisper.WhisperTranscriber`, audio over 30 s in an eval.py batch) and the
cascade over files (`cascade.Cascade`, audio over the shorter model's window).
"""

from __future__ import annotations

import dataclasses
import re
import typing as tp

import numpy as np

from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.models.features import CHUNK_SAMPLES


def chunk_windows(num_samples: int, window: int = CHUNK_SAMPLES,
                  stride: int = 5 * SAMPLE_RATE) -> list[tuple[int, int]]:
  """[start, end) sample windows covering long audio: `window` wide, each overlapping the next by
  2·`stride` (whisper-jax's 30 s chunks with 5 s strides on each side → a new window every 20 s)."""
  step = window - 2 * stride
  if step <= 0:
    raise ValueError(f"chunk stride {stride} leaves no step in a {window}-sample window")
  if num_samples <= window:
    return [(0, num_samples)]
  out, start = [], 0
  while True:
    out.append((start, min(start + window, num_samples)))
    if start + window >= num_samples:
      return out
    start += step


_WORD_CHARS = re.compile(r"[^\w']+")


def _key(word: str) -> str:
  return _WORD_CHARS.sub("", word.lower())


def merge_overlap(left: list[str], right: list[str]) -> tuple[int, int]:
  """Where to join the words of two overlapping windows, keeping one copy of the overlap: the
  merge is `left[:a] + right[b:]` for the returned (a, b).

  transformers' chunked-pipeline merge at word level: slide `right` along `left`, score each
  alignment by matching words / overlap length (+ a tiny bonus for longer overlaps), and at the best
  alignment (≥ 2 matching words) keep the first half of the overlap from `left` and the second half
  from `right`, the halves away from the window edges, where words are cut. Without such an
  alignment (silence at the boundary, or a window with no words) the windows are concatenated.
  """
  a, b = [_key(w) for w in left], [_key(w) for w in right]
  best, cut = 0.0, None
  for i in range(1, len(a) + len(b)):
    ls, le = max(0, len(a) - i), min(len(a), len(a) + len(b) - i)
    rs, re_ = max(0, i - len(a)), min(len(b), i)
    matches = sum(1 for x, y in zip(a[ls:le], b[rs:re_]) if x and x == y)
    score = matches / i + i / 10000.0
    if matches > 1 and score > best:
      best, cut = score, (ls, le, rs, re_)
  if cut is None:
    return len(left), 0
  ls, le, rs, re_ = cut
  return (ls + le) // 2, (rs + re_) // 2


def merge_words(texts: tp.Sequence[str]) -> list[tuple[str, int]]:
  """The words of one transcript from the transcripts of consecutive overlapping windows, each
  with the index of the window it was kept from."""
  words: list[tuple[str, int]] = []
  for k, text in enumerate(texts):
    right = text.split()
    a, b = merge_overlap([w for w, _ in words], right) if words else (0, 0)
    words = words[:a] + [(w, k) for w in right[b:]]
  return words


def merge_chunks(texts: tp.Sequence[str]) -> str:
  """One transcript from the transcripts of consecutive overlapping windows."""
  return " ".join(w for w, _ in merge_words(texts))


@dataclasses.dataclass(frozen=True)
class Segment:
  """A stretch of a transcript with its time in the audio (seconds)."""

  start: float
  end: float
  text: str


@dataclasses.dataclass(frozen=True)
class Windowing:
  """Audio cut into `window`-sample windows overlapping by 2·`stride` (`chunk_windows`), and the
  windows' texts merged back into one (`merge_chunks`)."""

  window: int = CHUNK_SAMPLES
  stride: int = 5 * SAMPLE_RATE

  def __post_init__(self):
    chunk_windows(2 * self.window, self.window, self.stride)  # raises for a stride with no step

  @property
  def step(self) -> int:
    """Samples from one window's start to the next's."""
    return self.window - 2 * self.stride

  def spans(self, num_samples: int) -> list[tuple[int, int]]:
    """[start, end) windows of `num_samples` of audio (one window for audio that fits)."""
    return chunk_windows(num_samples, self.window, self.stride)

  def cut(self, audio: np.ndarray) -> list[np.ndarray]:
    """The windows of one utterance's audio (float32 [n]), as views."""
    return [audio[start:end] for start, end in self.spans(audio.shape[0])]

  def merge(self, texts: tp.Sequence[str]) -> str:
    """One transcript from the texts of an utterance's consecutive windows."""
    return merge_chunks(texts)

  def segments(self, texts: tp.Sequence[str], num_samples: int) -> list[Segment]:
    """The merged transcript of `num_samples` of audio cut by `spans`, one segment per window: the
    words kept from that window, timed from the middle of its overlap with the previous window to
    the middle of its overlap with the next (where the merge joins them). A window none of whose
    words were kept has no segment."""
    spans = self.spans(num_samples)
    if len(texts) != len(spans):
      raise ValueError(f"{len(texts)} texts for the {len(spans)} windows of {num_samples} samples")
    words = merge_words(texts)
    out = []
    for k, (start, end) in enumerate(spans):
      kept = [w for w, src in words if src == k]
      if not kept:
        continue
      t0 = 0 if k == 0 else start + self.stride
      t1 = num_samples if k == len(spans) - 1 else end - self.stride
      out.append(Segment(round(t0 / SAMPLE_RATE, 3), round(t1 / SAMPLE_RATE, 3), " ".join(kept)))
    return out
