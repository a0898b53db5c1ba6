"""A Transcriber: one converted checkpoint + typed settings → text, batch after batch.

    t = llada_jax.inference.open("ckpt/whisper-llada", LLaDASettings.paper("semi_ar"))
    texts = t(["a.flac", "b.flac"])              # paths or float32 16 kHz arrays

It owns its compiled functions: one per batch shape, compiled ahead of time with explicit input
shardings, timed (`compile_seconds`) and logged once. It runs on a `Placement`: a (data, fsdp,
tensor) mesh whose data-parallel axes split each batch, over one process or several
(`inference.open(..., mesh=(8, 1, 1))`; default one device). `batch_size` is the global batch:
rows per step over all devices and processes. `eval.py` drives the same objects through
`transcribe`, which takes this process's rows (`local_batch_size` of them) of a fixed-shape
`AudioBatch` (`inference.batch`) and returns one entry per row: (text, per-token confidences or
None), or an Exception that becomes that utterance's error record.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import time
import typing as tp
import weakref

import jax
import numpy as np

from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import DurationError, UtteranceError
from llada_jax.models.features import CHUNK_SAMPLES
from llada_jax.parallel.placement import Placement

log = logging.getLogger(__name__)

Result = tuple[str, "list[float] | None"]
LONG_STEP_SAMPLES = 20 * SAMPLE_RATE  # width granularity of the extra buckets for > 30 s audio

# Compiled executables, shared by transcribers of the same model structure in one process (the
# demo evaluates many systems of one checkpoint in-process).
_EXECUTABLES: dict[tp.Hashable, tp.Any] = {}


class _Weights:
  """A loaded model, held by the transcribers that use it (and weakly by `_LOADED`)."""

  def __init__(self, model, lora: bool):
    self.model, self.lora = model, lora


_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _has_lora(config) -> bool:
  """Whether a checkpoint's model carries LoRA adapters (its LM's config names them)."""
  return getattr(getattr(config, "lm", config), "lora", None) is not None


# What a transcriber with a window (`max_seconds`) does with longer audio: "trim" cuts it to the
# window, as Diffusion-ASR's inference.py cuts every utterance (`audio[:sr*30]`, and their WER
# counts those utterances); "error" refuses it (an error record in eval.py).
TOO_LONG = ("trim", "error")


def check_max_duration(seconds: float, limit: float = 30.0) -> None:
  """Raise `DurationError` for audio longer than `limit` seconds (too_long="error").

  Whisper-LLaDA encodes exactly one 30 s Whisper window (the authors pad or cut every utterance to
  30 s, and the Q-Former's 88 windows cover those 1500 encoder frames), so longer audio cannot be
  transcribed whole.
  """
  if seconds > limit:
    raise DurationError(f"{seconds:.2f} s of audio is longer than this strategy's {limit:g} s "
                        f"limit (Whisper-LLaDA encodes one 30 s Whisper window, as in the paper); "
                        f"split the audio first, cut it to the window (too_long='trim', the "
                        f"authors' rule), or transcribe it with Whisper (WhisperSettings), which "
                        f"transcribes 30 s windows and merges them")


def batch_buckets(buckets: tp.Sequence[int], lengths: np.ndarray) -> tuple[int, ...]:
  """A transcriber's buckets plus, for audio longer than the last, widths in 20 s steps."""
  out = set(int(b) for b in buckets)
  for n in np.asarray(lengths)[np.asarray(lengths) > max(out)]:
    out.add(int(math.ceil(n / LONG_STEP_SAMPLES) * LONG_STEP_SAMPLES))
  return tuple(sorted(out))


class Transcriber(abc.ABC):
  """Audio → text for one checkpoint. Subclasses set `name`, `buckets` (audio widths in samples to
  batch by, increasing), `max_seconds` (the window the model sees; None: any length), `too_long`
  (longer audio: "trim" to the window or "error", see TOO_LONG) and `info` (settings for a run's
  summary), and implement `transcribe`."""

  name: str
  max_seconds: float | None = None
  too_long: str = "trim"

  def __init__(self, batch_size: int, placement: Placement | None = None):
    """`placement`: the mesh the model runs on (built-in transcribers make the default one
    device); None for a transcriber that places nothing itself (one process)."""
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size {batch_size!r}: expected a positive integer")
    self.placement = placement
    self.batch_size = batch_size if placement is None else placement.global_batch(batch_size)
    self.buckets: tuple[int, ...] = (CHUNK_SAMPLES,)
    self.info: dict = {}
    self.compile_seconds = 0.0
    self.compiled_shapes: list[str] = []
    self.placement_info: dict = {}

  @property
  def local_batch_size(self) -> int:
    """This process's rows of each batch (`batch_size` / processes)."""
    return self.batch_size if self.placement is None else self.placement.local_batch(
        self.batch_size)

  def _load(self, checkpoint: str | os.PathLike, *, dtype: str | None, attention: str | None,
            merge_lora: bool, quantize: str = "none") -> None:
    """The model on the placement's mesh, split for the compiled functions; its placement in
    `info`. `quantize` ("int8") needs the LoRA adapters merged: a ValueError otherwise."""
    from flax import nnx

    from llada_jax.models.checkpoint import read_config
    from llada_jax.models.quantize import check_quantize
    from llada_jax.parallel.placement import load_model, resolve_dtype, state_shardings

    quantize = check_quantize(quantize)
    placement = tp.cast(Placement, self.placement)
    # Transcribers of one checkpoint on one placement (a served model and the deliberation of a
    # served cascade) share its weights: they are never written to.
    stat = os.stat(checkpoint)  # a checkpoint written again in its place is another one
    key = (os.path.realpath(checkpoint), stat.st_ino, stat.st_mtime_ns, placement, dtype,
           attention, merge_lora, quantize)
    self._weights = _LOADED.get(key)
    if self._weights is None:
      model = load_model(checkpoint, placement, dtype=dtype, attention=attention,
                         merge_lora=merge_lora, quantize=quantize)
      self._weights = _LOADED[key] = _Weights(model, _has_lora(read_config(checkpoint)))
    self.model, lora = self._weights.model, self._weights.lora
    self._graphdef, self._state = nnx.split(self.model)
    self._state_shardings = state_shardings(self._state)
    self.placement_info = {**placement.info(), "batch_size": self.batch_size,
                           "per_device_batch": self.batch_size // placement.ways,
                           "dtype": resolve_dtype(dtype) or "checkpoint",
                           "attention": attention or "checkpoint", "quantize": quantize,
                           "lora": None if not lora else ("merged" if merge_lora else "adapters")}

  @property
  def window_samples(self) -> int | None:
    """`max_seconds` in samples at 16 kHz; None for a transcriber of any length."""
    return None if self.max_seconds is None else int(round(self.max_seconds * SAMPLE_RATE))

  def pipeline_buckets(self, lengths: np.ndarray) -> tuple[int, ...]:
    """Audio widths to batch utterances of `lengths` by. With a window, `buckets` up to it and the
    window itself: the pipeline (too_long="trim") cuts longer audio to it. Without one, wider
    buckets in 20 s steps for longer audio (Whisper decodes it in overlapping 30 s windows)."""
    window = self.window_samples
    if window is None:
      return batch_buckets(self.buckets, lengths)
    return tuple(sorted({int(b) for b in self.buckets if b < window} | {window}))

  def width_for(self, samples: int) -> int:
    """The audio width (samples) a row of `samples` is padded to: its bucket."""
    return min(b for b in self.pipeline_buckets(np.asarray([samples])) if b >= samples)

  def batch_key(self, samples: int, hypothesis: str | None = None) -> tp.Hashable:
    """What of one row (its audio length in samples; for deliberation its first-pass text)
    decides the compiled shape of a batch. Rows batched only with rows of their own key are each
    decoded as they would be alone: the cascade and the server batch by it."""
    return self.width_for(samples)

  def key_examples(self) -> list[tuple[int, str | None]]:
    """(samples, hypothesis) rows with every `batch_key` this transcriber gives audio up to its
    window (or 30 s): a batch of each compiles every shape it will run."""
    return [(w, None) for w in self.pipeline_buckets(np.zeros(0, np.int64))]

  @abc.abstractmethod
  def transcribe(self, batch: AudioBatch) -> list[Result | Exception]:
    """One batch → one result per row, padding rows included (see the module docstring)."""

  def compiled(self, key: tp.Hashable, fn: tp.Callable, *args, what: str,
               in_shardings=None, out_shardings=None):
    """`jax.jit(fn)` compiled ahead of time for `args`' shapes (arrays or ShapeDtypeStructs) and
    the given shardings, traced under the placement's activation rules, once per `key` (and
    placement) in the process; the time goes to `compile_seconds` and the log."""
    key = (key, self.placement)
    exe = _EXECUTABLES.get(key)
    if exe is None:
      start = time.perf_counter()
      jitted = jax.jit(fn) if self.placement is None else jax.jit(
          fn, in_shardings=in_shardings, out_shardings=out_shardings)
      with contextlib.nullcontext() if self.placement is None else self.placement.tracing():
        exe = jitted.lower(*args).compile()
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      self.compiled_shapes.append(what)
      log.info("%s: compiled %s in %.1f s", self.name, what, seconds)
      _EXECUTABLES[key] = exe
    return exe

  def __call__(self, audio: tp.Sequence[np.ndarray | str | os.PathLike],
               hypotheses: tp.Sequence[str] | None = None) -> list[str]:
    """Texts for audio files or float32 16 kHz arrays (and, for deliberation, their first-pass
    `hypotheses`); raises the first utterance's error. Audio longer than `max_seconds` is cut to
    it (too_long="trim", logged) or raises `DurationError` (too_long="error")."""
    from llada_jax.data.pipeline import ArraySource, AudioBatches, PipelineConfig

    if jax.process_count() > 1:
      raise NotImplementedError("Transcriber(...) on paths or arrays runs in one process; with "
                                "several, run eval.py (each process feeds its own rows)")
    source = ArraySource(audio)
    if hypotheses is not None and len(hypotheses) != len(source):
      raise ValueError(f"{len(hypotheses)} hypotheses for {len(source)} audio inputs")
    if source.errors:
      raise UtteranceError(f"{source.errors[0].path}: {source.errors[0].reason}")
    lengths = source.lengths()
    window = self.window_samples
    if window is not None:
      longer = [i for i, n in enumerate(lengths) if n > window]
      if longer and self.too_long == "error":
        try:
          check_max_duration(lengths[longer[0]] / SAMPLE_RATE, self.max_seconds)
        except DurationError as e:
          raise DurationError(f"{source.name_of(longer[0])}: {e}") from None
      if longer:
        log.info("%s: %d of %d inputs are longer than %g s: cut to it (too_long='trim')",
                 self.name, len(longer), len(lengths), self.max_seconds)
    config = PipelineConfig(batch_size=self.batch_size, buckets=self.pipeline_buckets(lengths),
                            shuffle=False, num_epochs=1, too_long="trim", num_threads=1,
                            prefetch=1)
    texts: list[str | None] = [None] * len(source)
    for batch in AudioBatches(source, config, process_index=0, process_count=1):
      if batch["errors"]:
        raise UtteranceError(f"{batch['errors'][0].path}: {batch['errors'][0].reason}")
      rows = [int(i) for i in batch["index"]]
      hyps = None if hypotheses is None else [hypotheses[i] if i >= 0 else None for i in rows]
      for i, result in zip(rows, self.transcribe(AudioBatch.from_pipeline(batch, hyps))):
        if i < 0:
          continue
        if isinstance(result, Exception):
          raise result
        texts[i] = result[0]
    return tp.cast(list[str], texts)
