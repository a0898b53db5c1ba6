"""Audio files of any length → text, through a first pass and, optionally, Whisper-LLaDA
deliberation over its hypotheses (the paper's cascade), file after file.

    cascade = Cascade(inference.open("ckpt/whisper"),
                      inference.open("ckpt/whisper-llada", LLaDASettings.paper("deliberation")))
    for r in cascade(["a.mp3", "b.m4a"]):    # FileResult per file, as each one finishes
      print(r.path, r.text, r.first_pass)

Every model sees audio in its own window only (Whisper: 30 s; a Whisper-LLaDA / Whisper-LLaMA:
its mel_frames / 100 s). Longer files are cut into overlapping windows of the cascade's window (the
shorter of the two models'), each window is transcribed — and deliberated over its own first-pass
text, with its own audio — and consecutive windows' texts are merged at their best word alignment
(`long_audio.Windowing`, the rule eval.py's Whisper strategy follows for audio over 30 s). Nothing
is cut away, unlike eval.py's Whisper-LLaDA strategies (too_long="trim", the authors' rule).
Windows of all files share fixed-shape batches of the transcriber's batch size, so each model
compiles one shape; a file's audio is decoded ahead on two threads while the models run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import typing as tp

import numpy as np

from llada_jax.data.audio import SAMPLE_RATE, AudioError, load_audio
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import UtteranceError
from llada_jax.inference.long_audio import Windowing
from llada_jax.inference.transcriber import Result, Transcriber
from llada_jax.models.features import CHUNK_SAMPLES


@dataclasses.dataclass(frozen=True)
class FileResult:
  index: int  # position in the input
  path: str
  text: str | None  # None: see error
  first_pass: str | None = None  # with deliberation: the first pass's text
  error: str | None = None
  seconds: float = 0.0  # audio length
  windows: int = 0  # windows transcribed


@dataclasses.dataclass
class _File:
  index: int
  path: str
  id: str
  seconds: float
  first: list  # per window: text, Exception or None (not yet)
  final: list
  left: int


@dataclasses.dataclass(frozen=True)
class _Piece:
  file: _File
  k: int  # window index
  audio: np.ndarray  # float32 [n ≤ window]


def window_of(t: Transcriber) -> int:
  """The audio (samples) a transcriber sees at once: its window, or Whisper's 30 s."""
  return t.window_samples or CHUNK_SAMPLES


def _message(e: Exception) -> str:
  return f"{type(e).__name__}: {e}"


class Cascade:
  """A first-pass transcriber and an optional deliberation transcriber (a Whisper-LLaDA with
  strategy "deliberation") over audio files; see the module docstring."""

  def __init__(self, first: Transcriber, deliberation: Transcriber | None = None, *,
               chunk_stride: float = 5.0, lookahead: int = 8):
    if deliberation is not None and getattr(deliberation, "name", "") != "deliberation":
      raise ValueError(f"deliberation: a Whisper-LLaDA transcriber with strategy 'deliberation', "
                       f"got {deliberation.name!r}")
    self.first, self.deliberation = first, deliberation
    self.batch_size = first.batch_size
    window = min(window_of(t) for t in (first, deliberation) if t is not None)
    # `chunk_stride` seconds of overlap on each side of a 30 s window, in proportion for others
    # (raises for a stride with no step).
    self.windowing = Windowing(window, int(round(chunk_stride * SAMPLE_RATE * window
                                                 / CHUNK_SAMPLES)))
    self.lookahead = max(1, int(lookahead))

  def __call__(self, paths: tp.Sequence[str], ids: tp.Sequence[str] | None = None
               ) -> tp.Iterator[FileResult]:
    """One FileResult per path, each as soon as its last window is done (roughly input order; an
    unreadable file at once). `ids` (default: the paths) key the per-utterance random streams of
    random masking, as eval.py's utterance ids do."""
    ids = list(paths) if ids is None else list(ids)
    queue: collections.deque[_Piece] = collections.deque()
    for index, audio, error in self._decoded(paths):
      if error is not None:
        yield FileResult(index, paths[index], None, error=_message(error))
        continue
      windows = self.windowing.cut(audio)
      f = _File(index, paths[index], ids[index], audio.shape[0] / SAMPLE_RATE,
                [None] * len(windows), [None] * len(windows), len(windows))
      queue.extend(_Piece(f, k, piece) for k, piece in enumerate(windows))
      while len(queue) >= self.batch_size:
        yield from self._run([queue.popleft() for _ in range(self.batch_size)])
    if queue:
      yield from self._run(list(queue))

  def _decoded(self, paths: tp.Sequence[str]):
    """(index, audio, None) or (index, None, AudioError) per path, decoded `lookahead` ahead."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
    pending: collections.deque = collections.deque()
    todo = iter(enumerate(paths))
    try:
      for _ in range(self.lookahead):
        if (item := next(todo, None)) is not None:
          pending.append((item[0], pool.submit(load_audio, item[1])))
      while pending:
        index, future = pending.popleft()
        if (item := next(todo, None)) is not None:
          pending.append((item[0], pool.submit(load_audio, item[1])))
        try:
          yield index, future.result(), None
        except AudioError as e:
          yield index, None, e
    finally:
      pool.shutdown(wait=False, cancel_futures=True)

  def _run(self, pieces: list[_Piece]) -> tp.Iterator[FileResult]:
    first = self._pass(self.first, pieces, None)
    for p, r in zip(pieces, first):
      p.file.first[p.k] = r
    if self.deliberation is not None:
      hyps = [None if isinstance(r, Exception) else r[0] for r in first]
      final = self._pass(self.deliberation, pieces, hyps)
    else:
      final = first
    for p, r in zip(pieces, final):
      p.file.final[p.k] = r
      p.file.left -= 1
      if not p.file.left:
        yield self._result(p.file)

  def _pass(self, t: Transcriber, pieces: list[_Piece], hypotheses: list[str | None] | None
            ) -> list[Result | Exception]:
    """One fixed-shape batch of windows through `t` (deliberation: over `hypotheses`; a window
    without one is skipped, its first-pass error standing)."""
    lengths = np.asarray([p.audio.shape[0] for p in pieces], np.int64)
    width = min(b for b in t.pipeline_buckets(lengths) if b >= lengths.max())
    b = self.batch_size
    audio, audio_len = np.zeros((b, width), np.float32), np.zeros((b,), np.int32)
    valid, index, ids = np.zeros((b,), bool), np.full((b,), -1, np.int64), [""] * b
    for r, p in enumerate(pieces):
      audio[r, :p.audio.shape[0]] = p.audio
      audio_len[r] = p.audio.shape[0]
      valid[r] = hypotheses is None or hypotheses[r] is not None
      index[r] = p.file.index
      ids[r] = p.file.id if len(p.file.first) == 1 else f"{p.file.id}#{p.k}"
    if not valid.any():
      return [UtteranceError("no first-pass text")] * len(pieces)
    batch = AudioBatch(audio=audio, audio_len=audio_len, valid=valid, ids=ids, index=index,
                       hypothesis=None if hypotheses is None else
                       list(hypotheses) + [None] * (b - len(pieces)))
    try:
      results = t.transcribe(batch)
    except (UtteranceError, AudioError) as e:
      results = [e] * b
    if len(results) != b:
      raise RuntimeError(f"{t.name}.transcribe returned {len(results)} results for a batch of {b}")
    return results[:len(pieces)]

  def _result(self, f: _File) -> FileResult:
    windows, delib = len(f.first), self.deliberation is not None
    first = None if any(isinstance(r, Exception) for r in f.first) else self._join(f.first)
    for k in range(windows):
      for r in (f.first[k], f.final[k]):  # the first pass's error, where it failed
        if isinstance(r, Exception):
          start = k * self.windowing.step / SAMPLE_RATE
          where = f"window {k + 1} of {windows} (from {start:g} s): " if windows > 1 else ""
          return FileResult(f.index, f.path, None, first_pass=first if delib else None,
                            error=where + _message(r), seconds=f.seconds, windows=windows)
    return FileResult(f.index, f.path, self._join(f.final), first_pass=first if delib else None,
                      seconds=f.seconds, windows=windows)

  def _join(self, results: list[Result]) -> str:
    """One text from a file's windows: the window's own text, or the merge of several."""
    texts = [r[0] for r in results]
    return texts[0] if len(texts) == 1 else self.windowing.merge(texts)
