"""Audio files of any length → text, through a first pass and, optionally, Whisper-LLaDA
deliberation over its hypotheses (the paper's cascade).

    cascade = Cascade(inference.open("ckpt/whisper"),
                      inference.open("ckpt/whisper-llada", LLaDASettings.paper("deliberation")))
    for r in cascade(["a.mp3", "b.m4a"]):    # FileResult per file, as each one finishes
      print(r.path, r.text, r.first_pass)

Every model sees audio in its own window only (Whisper: 30 s; a Whisper-LLaDA / Whisper-LLaMA:
its mel_frames / 100 s). Longer files are cut into overlapping windows of the cascade's window (the
shorter of the two models'), each window is transcribed — and deliberated over its own first-pass
text, with its own audio — and consecutive windows' texts are merged at their best word alignment
(`long_audio.Windowing`). Nothing is cut away, unlike eval.py's Whisper-LLaDA strategies
(too_long="trim", the authors' rule). This is the one place long audio is windowed: a Whisper
transcriber hands its rows over 30 s to `Cascade.transcribe` (so eval.py's Whisper strategy and
`Transcriber.__call__` follow the same rule).

Batching. Windows wait in queues by pass and by `Transcriber.batch_key` (the part of a row that
decides the compiled shape: its bucket, an adaptive response length, a deliberation hypothesis's
width) and run in fixed-shape batches of the transcriber's batch size, so each window is decoded
exactly as it would be alone: a file's text does not depend on the files around it. Its random
streams (random masking / remasking) are keyed by the audio's content, not by its name. `__call__`
drives the queues over a list of files (a file's audio decoded ahead on two threads while the
models run); `llada_jax.serve` drives the same queues from concurrent requests (`start`, `key`,
`run`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import typing as tp

import numpy as np

from llada_jax.data.audio import SAMPLE_RATE, AudioError, load_audio
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import UtteranceError
from llada_jax.inference.long_audio import Segment, Windowing
from llada_jax.inference.transcriber import Result, Transcriber
from llada_jax.models.features import CHUNK_SAMPLES
from llada_jax.parallel import distributed


@dataclasses.dataclass(frozen=True)
class FileResult:
  index: int  # position in the input
  path: str
  text: str | None  # None: see error
  first_pass: str | None = None  # with deliberation: the first pass's text
  error: str | None = None
  seconds: float = 0.0  # audio length
  windows: int = 0  # windows transcribed
  segments: tuple[Segment, ...] = ()  # the text by window, timed (none for a failed file)


@dataclasses.dataclass(eq=False)
class Job:
  """One file in the cascade: its windows' results as they come."""

  index: int
  path: str
  id: str  # keys the random streams of its windows
  samples: int
  first: list  # per window: Result, Exception or None (not yet)
  final: list
  left: int  # windows not finished
  cancelled: bool = False  # its windows are dropped from the queues


@dataclasses.dataclass(eq=False)
class Window:
  """One window of a job's audio, on its way through the passes."""

  job: Job
  k: int  # window index
  audio: np.ndarray  # float32 [n ≤ window]
  stage: int = 0  # the pass it waits for: 0 first, 1 deliberation
  hypothesis: str | None = None  # deliberation's input: the first pass's text

  @property
  def id(self) -> str:
    return self.job.id if len(self.job.first) == 1 else f"{self.job.id}#{self.k}"


class Queues:
  """Windows waiting, in FIFO queues by key; a key's queue is a batch once it holds `batch_size`
  windows, or, for a server, once its oldest has waited long enough."""

  def __init__(self):
    self._queues: dict[tp.Hashable, collections.deque] = {}
    self._seq = itertools.count()

  def add(self, key: tp.Hashable, item: tp.Any, now: float = 0.0) -> None:
    self._queues.setdefault(key, collections.deque()).append((now, next(self._seq), item))

  def __len__(self) -> int:
    return sum(len(q) for q in self._queues.values())

  def take(self, key: tp.Hashable, n: int) -> list:
    q = self._queues[key]
    out = [q.popleft()[2] for _ in range(min(n, len(q)))]
    if not q:
      del self._queues[key]
    return out

  def drop(self, keep: tp.Callable[[tp.Any], bool]) -> int:
    """Removes the items `keep` refuses; their number."""
    dropped = 0
    for key in list(self._queues):
      q = self._queues[key]
      kept = collections.deque(e for e in q if keep(e[2]))
      dropped += len(q) - len(kept)
      if kept:
        self._queues[key] = kept
      else:
        del self._queues[key]
    return dropped

  def keys(self) -> list[tp.Hashable]:
    return list(self._queues)

  def full(self, size: int | tp.Callable[[tp.Hashable], int],
           among: tp.Callable[[tp.Hashable], bool] = lambda k: True) -> tp.Hashable | None:
    """A key (of those `among` accepts) with at least `size` (of the key) items, the one whose
    oldest came first; or None."""
    at = size if callable(size) else (lambda k: size)
    keys = [k for k, q in self._queues.items() if among(k) and len(q) >= at(k)]
    return min(keys, key=lambda k: self._queues[k][0][1]) if keys else None

  def first(self, rank: tp.Callable[[tp.Hashable], tp.Any] = lambda k: 0,
            among: tp.Callable[[tp.Hashable], bool] = lambda k: True
            ) -> tuple[tp.Hashable, float] | None:
    """(key, arrival time of its oldest item) of the queue to run next when none is full, of
    those `among` accepts: the lowest `rank`, then the oldest; None when there is none."""
    keys = [k for k in self._queues if among(k)]
    if not keys:
      return None
    key = min(keys, key=lambda k: (rank(k), self._queues[k][0][1]))
    return key, self._queues[key][0][0]


def window_of(t: Transcriber) -> int:
  """The audio (samples) a transcriber sees at once: its window, or Whisper's 30 s."""
  return t.window_samples or CHUNK_SAMPLES


def content_id(audio: np.ndarray) -> str:
  """A file's id from its samples: the key of its random streams, the same for the same audio
  under any name, alone or among others."""
  return hashlib.sha1(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()[:16]


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
    if deliberation is not None and deliberation.batch_size != first.batch_size:
      raise ValueError(f"deliberation: batch size {deliberation.batch_size}, the first pass's "
                       f"is {first.batch_size}")
    self.first, self.deliberation = first, deliberation
    self.stages: tuple[Transcriber, ...] = (first,) if deliberation is None else (first,
                                                                                  deliberation)
    self.batch_size = first.batch_size
    window = min(window_of(t) for t in self.stages)
    # `chunk_stride` seconds of overlap on each side of a 30 s window, in proportion for others
    # (raises for a stride with no step).
    self.windowing = Windowing(window, int(round(chunk_stride * SAMPLE_RATE * window
                                                 / CHUNK_SAMPLES)))
    self.lookahead = max(1, int(lookahead))

  # -- the steps, for any driver -----------------------------------------------------------------

  def start(self, index: int, path: str, audio: np.ndarray, id: str | None = None
            ) -> list[Window]:
    """A job for one file's audio (float32 [n] at 16 kHz): its windows, waiting for the first
    pass. `id` (default: `content_id(audio)`) keys its random streams."""
    pieces = self.windowing.cut(audio)
    job = Job(index, path, content_id(audio) if id is None else id, int(audio.shape[0]),
              [None] * len(pieces), [None] * len(pieces), len(pieces))
    return [Window(job, k, piece) for k, piece in enumerate(pieces)]

  def key(self, w: Window) -> tuple[int, tp.Hashable]:
    """The queue a window waits in: its pass, and that pass's batch key for it."""
    return w.stage, self.stages[w.stage].batch_key(int(w.audio.shape[0]), w.hypothesis)

  def run(self, windows: list[Window]) -> tuple[list[Window], list[Job]]:
    """One batch of windows of one key (at most `batch_size`) through their pass: (the windows
    that go on to deliberation, the jobs this batch finished; `result` gives their results)."""
    results = self._pass(self.stages[windows[0].stage], windows)
    onward, done = [], []
    for w, r in zip(windows, results):
      goes_on, job = self.record(w, r)
      if goes_on:
        onward.append(w)
      elif job is not None:
        done.append(job)
    return onward, done

  def record(self, w: Window, r: Result | Exception) -> tuple[bool, Job | None]:
    """A window's result from its pass → (whether it goes on to deliberation, its job if that
    was the job's last window)."""
    stage = w.stage
    if stage == 0:
      w.job.first[w.k] = r
    if stage + 1 < len(self.stages) and not isinstance(r, Exception):
      w.stage, w.hypothesis = stage + 1, r[0]
      return True, None
    w.job.final[w.k] = r
    w.job.left -= 1
    return False, None if w.job.left else w.job

  def result(self, job: Job) -> FileResult:
    windows, delib = len(job.first), self.deliberation is not None
    seconds = job.samples / SAMPLE_RATE
    first = None if any(isinstance(r, Exception) for r in job.first) else self._join(job.first)
    for k in range(windows):
      for r in (job.first[k], job.final[k]):  # the first pass's error, where it failed
        if isinstance(r, Exception):
          start = k * self.windowing.step / SAMPLE_RATE
          where = f"window {k + 1} of {windows} (from {start:g} s): " if windows > 1 else ""
          return FileResult(job.index, job.path, None, first_pass=first if delib else None,
                            error=where + _message(r), seconds=seconds, windows=windows)
    texts = [r[0] for r in job.final]
    return FileResult(job.index, job.path, self._join(job.final),
                      first_pass=first if delib else None, seconds=seconds, windows=windows,
                      segments=tuple(self.windowing.segments(texts, job.samples)))

  def warm_up(self, done: set | None = None) -> list[int]:
    """Compile every shape each pass runs: one batch per batch key (`Transcriber.key_examples`),
    a row of faint audio and padding. `done` holds the (transcriber, key) pairs compiled already
    (a transcriber shared by several cascades compiles once) and is added to. Returns the shapes
    compiled per pass."""
    done = set() if done is None else done
    shapes = []
    for stage, t in enumerate(self.stages):
      n = 0
      for samples, hypothesis in t.key_examples():
        key = (id(t), t.batch_key(samples, hypothesis))
        if key in done:
          continue
        done.add(key)
        n += 1
        audio = 1e-3 * np.sin(np.arange(samples, dtype=np.float32) / 7.0)  # not pure silence
        job = Job(-1, "warm-up", "warm-up", samples, [None], [None], 1)
        self._pass(t, [Window(job, 0, audio, stage, hypothesis)])
      shapes.append(n)
    return shapes

  def transcribe(self, batch: AudioBatch) -> list[Result | Exception]:
    """A transcriber's batch of rows of any length (eval.py's, `Transcriber.__call__`'s) through
    the first pass: each valid row cut into windows, the windows decoded in batches of the
    transcriber's local batch size at the full window width, and merged per row; one result per
    row (padding rows: ""). Every process runs as many batches as the one with the most windows
    (each is a step all processes take together). Merged texts have no per-token confidences
    (the words of two windows are spliced)."""
    if self.deliberation is not None:
      raise ValueError("Cascade.transcribe runs the first pass; deliberation needs each window's "
                       "own first-pass text (Cascade(...) on files)")
    t, size, width = self.first, self.first.local_batch_size, window_of(self.first)
    windows, texts = [], {}
    for r in np.flatnonzero(batch.valid):
      audio = batch.audio[r, :int(batch.audio_len[r])]
      windows.extend(self.start(int(r), batch.ids[r], audio, batch.ids[r]))
      texts[int(r)] = []
    groups = distributed.agree_max(-(-len(windows) // size))
    for start in range(0, groups * size, size):
      group = windows[start:start + size]
      for w, result in zip(group, self._pass(t, group, rows=size, width=width)):
        texts[w.job.index].append(result[0])
    out: list[Result | Exception] = [("", None)] * len(batch)
    for r, row in texts.items():
      out[r] = (self.windowing.merge(row), None)
    return out

  # -- files -------------------------------------------------------------------------------------

  def __call__(self, paths: tp.Sequence[str], ids: tp.Sequence[str] | None = None
               ) -> tp.Iterator[FileResult]:
    """One FileResult per path, each as soon as its last window is done (roughly input order; an
    unreadable file at once). `ids` (default: each file's `content_id`) key the per-utterance
    random streams of random masking / remasking."""
    queues = Queues()
    for index, audio, error in self._decoded(paths):
      if error is not None:
        yield FileResult(index, paths[index], None, error=_message(error))
        continue
      for w in self.start(index, paths[index], audio, None if ids is None else ids[index]):
        queues.add(self.key(w), w)
      while (key := queues.full(self.batch_size)) is not None:
        yield from self._step(queues, key)
    # The rest, first passes before deliberations (which they may fill up).
    while (head := queues.first(rank=lambda k: k[0])) is not None:
      yield from self._step(queues, head[0])

  def _step(self, queues: Queues, key) -> tp.Iterator[FileResult]:
    onward, done = self.run(queues.take(key, self.batch_size))
    for w in onward:
      queues.add(self.key(w), w)
    yield from (self.result(job) for job in done)

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

  def _pass(self, t: Transcriber, windows: list[Window], *, rows: int | None = None,
            width: int | None = None) -> list[Result | Exception]:
    """One fixed-shape batch of windows (of one key) through `t`: `rows` (default: the batch
    size) rows of `width` samples (default: the windows' bucket); padding rows fill the rest."""
    b = self.batch_size if rows is None else rows
    if len(windows) > b:
      raise ValueError(f"{len(windows)} windows for a batch of {b}")
    if width is None:
      width = t.width_for(max(int(w.audio.shape[0]) for w in windows))
    audio, audio_len = np.zeros((b, width), np.float32), np.zeros((b,), np.int32)
    valid, index, ids = np.zeros((b,), bool), np.full((b,), -1, np.int64), [""] * b
    for r, w in enumerate(windows):
      n = min(int(w.audio.shape[0]), width)
      audio[r, :n] = w.audio[:n]
      audio_len[r], valid[r], index[r], ids[r] = n, True, w.job.index, w.id
    deliberation = any(w.stage for w in windows)
    batch = AudioBatch(audio=audio, audio_len=audio_len, valid=valid, ids=ids, index=index,
                       hypothesis=[w.hypothesis for w in windows] + [None] * (b - len(windows))
                       if deliberation else None)
    try:
      results = t.transcribe(batch)
    except (UtteranceError, AudioError) as e:
      results = [e] * b
    if len(results) != b:
      raise RuntimeError(f"{t.name}.transcribe returned {len(results)} results for a batch of {b}")
    return results[:len(windows)]

  def _join(self, results: list[Result]) -> str:
    """One text from a file's windows: the window's own text, or the merge of several."""
    texts = [r[0] for r in results]
    return texts[0] if len(texts) == 1 else self.windowing.merge(texts)
