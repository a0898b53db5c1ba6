"""Evaluation runner: data → batches → strategy → records → summary. `eval.py` is its command line.

A *strategy* turns a batch of audio into text. It is an object with

    name: str
    buckets: tuple[int, ...]     audio widths in samples (16 kHz) to batch by, increasing; set by
                                 `prepare`. Utterances longer than the last one are batched in extra
                                 buckets (multiples of 20 s) and the strategy must handle them
                                 (whisper: 30 s windows, merged) unless `max_seconds` excludes them.
    max_seconds: float | None    longer utterances become error records (see `check_max_duration`);
                                 None: the strategy takes any length.
    prepare(checkpoint: str, args: argparse.Namespace) -> None
    transcribe(batch: dict) -> list[tuple[str, list[float] | None] | Exception]

and optionally `add_args(parser)` (a staticmethod adding its own options), `info` (a dict of
settings copied into the summary) and `compile_seconds` (a float the strategy increases by the time
it spends compiling; without it the runner times one warm-up `transcribe` per new batch shape as
compile time). `batch` is a `data.pipeline` batch:
audio float32 [B, S], audio_len [B], valid [B] (padding rows are False), ids, text (references),
speaker; the result has one entry per row (padding rows' entries are ignored): the hypothesis and
its per-token confidences (or None), or an Exception instance, which becomes that utterance's error
record. A strategy may also raise `UtteranceError`/`DurationError`/`AudioError`: every utterance of
the batch then gets an error record. Any other exception is a bug and stops the run.

Register a strategy in `STRATEGIES` by name: the class itself, or "module:Class" to import lazily.

Outputs (written atomically: temp file + rename): OUT/hyps.jsonl, one line per utterance sorted by
id ({id, ref, hyp, confidences, seconds} or {id, ref, hyp: null, error, path}), and OUT/summary.json
(wer, rtf, num_utts, num_errors, audio_seconds, decode_seconds, wall_seconds, compile_seconds, …,
args).
RTF = decode seconds (the strategy's own time on warm shapes, features included, compile excluded)
/ seconds of audio transcribed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import re
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np

from llada_jax.audio import SAMPLE_RATE, AudioError
from llada_jax.data import librispeech, pipeline
from llada_jax.data.librispeech import ErrorRecord

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window; the paper's cap for Whisper-LLaDA
DEFAULT_BUCKET_SECONDS = (5.0, 10.0, 20.0, 30.0)
LONG_STEP_SAMPLES = 20 * SAMPLE_RATE  # width granularity of the extra buckets for > 30 s audio


class EvalError(RuntimeError):
  """The run cannot go on: a broken data spec or checkpoint, or (with --strict) bad data."""


def checkpoint_config(checkpoint: str, kind: type, needs: str):
  """The model config stored in `checkpoint`, which must be a `kind`; else an EvalError that says
  what the strategy `needs`."""
  from llada_jax import checkpoint as ckpt

  try:
    config = ckpt.read_config(checkpoint)
  except (ckpt.CheckpointError, ValueError, OSError) as e:
    raise EvalError(f"--checkpoint {checkpoint}: {e}") from e
  if not isinstance(config, kind):
    raise EvalError(f"{needs}; {checkpoint} holds a {type(config).__name__}")
  return config


class UtteranceError(ValueError):
  """An utterance (or every utterance of a batch) cannot be transcribed: an error record."""


class DurationError(UtteranceError):
  """Audio longer than what a strategy accepts."""


def check_max_duration(seconds: float, limit: float = 30.0) -> None:
  """Raise `DurationError` for audio longer than `limit` seconds.

  Whisper-LLaDA encodes exactly one 30 s Whisper window (the authors pad or cut every utterance to
  30 s, and the Q-Former's 88 windows cover those 1500 encoder frames), so longer audio cannot be
  transcribed whole; cutting it silently would drop words and inflate WER without a trace.
  """
  if seconds > limit:
    raise DurationError(f"{seconds:.2f} s of audio is longer than this strategy's {limit:g} s "
                        f"limit (Whisper-LLaDA encodes one 30 s Whisper window, as in the paper); "
                        f"split the audio first, or use --strategy whisper, which transcribes 30 s "
                        f"windows and merges them")


class Strategy(tp.Protocol):
  name: str
  buckets: tuple[int, ...]
  max_seconds: float | None

  def prepare(self, checkpoint: str, args: argparse.Namespace) -> None: ...

  def transcribe(self, batch: dict) -> list[tuple[str, list[float] | None] | Exception]: ...


# ---------------------------------------------------------------------------------------------
# Buckets and long audio


def bucket_widths(seconds: tp.Sequence[float]) -> tuple[int, ...]:
  """Audio widths (samples) for buckets of whole mel frames: a bucket of s seconds holds audio whose
  short log-mel has s·100 frames (`features.num_frames`); the 30 s bucket is Whisper's window."""
  from llada_jax.features import HOP, N_FFT

  out = set()
  for s in seconds:
    frames = int(round(float(s) * 100))
    frames += frames % 2
    if not 0 < frames <= 3000:
      raise ValueError(f"bucket of {s} s: expected 0 < seconds ≤ 30")
    out.add(CHUNK_SAMPLES if frames == 3000 else frames * HOP - (N_FFT // 2 + 1))
  out.add(CHUNK_SAMPLES)
  return tuple(sorted(out))


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


def merge_overlap(left: list[str], right: list[str]) -> list[str]:
  """Join the words of two overlapping windows, keeping one copy of the overlap.

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
    return left + right
  ls, le, rs, re_ = cut
  return left[:(ls + le) // 2] + right[(rs + re_) // 2:]


def merge_chunks(texts: tp.Sequence[str]) -> str:
  """One transcript from the transcripts of consecutive overlapping windows."""
  words: list[str] = []
  for text in texts:
    words = merge_overlap(words, text.split()) if words else text.split()
  return " ".join(words)


# ---------------------------------------------------------------------------------------------
# The whisper strategy


_EXECUTABLES: dict[tuple, tp.Any] = {}  # compiled decoders, shared by strategy instances in-process


class WhisperStrategy:
  """Greedy Whisper transcription with the JAX model of a converted Whisper checkpoint.

  Features (log-mel) and the KV-cached greedy loop run in one jitted function, compiled ahead of
  time once per (batch, audio width) and logged. By default every utterance is padded to 30 s, as
  Whisper was trained and as transformers' WhisperFeatureExtractor does. `--bucketed`: a bucket of
  s seconds feeds the encoder s·100 mel frames instead of 3000 — faster on a CPU, but off Whisper's
  training distribution (tiny.en falls into repetition loops on 1–6 s espeak-ng utterances: 215 %
  WER bucketed vs 56 % at 30 s in the demo).
  """

  name = "whisper"
  max_seconds = None  # audio over 30 s is transcribed in overlapping 30 s windows

  def __init__(self):
    self.compile_seconds = 0.0
    self.compiled_shapes: list[str] = []
    self.buckets: tuple[int, ...] = (CHUNK_SAMPLES,)

  @staticmethod
  def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("strategy whisper")
    g.add_argument("--bucketed", action="store_true",
                   help="length buckets with shorter encoder input (faster on a CPU, less "
                        "accurate on short audio); default: every utterance padded to 30 s "
                        "(3000 mel frames), as Whisper was trained")
    g.add_argument("--bucket-seconds", type=float, nargs="+", default=list(DEFAULT_BUCKET_SECONDS),
                   help="with --bucketed: bucket lengths in seconds (30 is always added)")
    g.add_argument("--no-suppress", action="store_true",
                   help="do not suppress Whisper's non-speech tokens (suppress_tokens)")
    g.add_argument("--chunk-stride", type=float, default=5.0,
                   help="> 30 s audio: seconds of overlap on each side of a 30 s window")
    g.add_argument("--language", default="en", help="multilingual models: the language token")
    g.add_argument("--encoder-rows", type=int, default=None,
                   help="encode this many utterances at a time (default: 1 on CPU, where the "
                        "memory-bound attention over 1500 frames is ~2× faster row by row; the "
                        "whole batch on accelerators)")

  def prepare(self, checkpoint: str, args: argparse.Namespace) -> None:
    from tokenizers import Tokenizer

    from llada_jax import checkpoint as ckpt
    from llada_jax.configs import WhisperConfig

    config = checkpoint_config(checkpoint, WhisperConfig,
                               "--strategy whisper needs a converted Whisper checkpoint")
    tok_file = Path(checkpoint) / "tokenizer.json"
    if not tok_file.is_file():
      raise EvalError(f"{checkpoint}: no tokenizer.json (convert with tools/convert.py)")
    self.tokenizer = Tokenizer.from_file(str(tok_file))
    self.eos_id = self._special("<|endoftext|>")
    language = getattr(args, "language", "en")
    # Whisper's own rule: the multilingual vocabularies have ≥ 51865 entries.
    if config.vocab_size >= 51865:
      names = ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    else:
      names = ["<|startoftranscript|>", "<|notimestamps|>"]
    self.prompt = [self._special(n) for n in names]
    source_cfg = ckpt.read_source_info(checkpoint).get("config", {})
    if getattr(args, "no_suppress", False):
      self.suppress, self.begin_suppress = (), ()
    else:
      self.suppress = tuple(int(i) for i in source_cfg.get("suppress_tokens") or ())
      self.begin_suppress = tuple(int(i) for i in source_cfg.get("begin_suppress_tokens") or ())
      if not self.suppress and not self.begin_suppress:
        log.info("%s: no suppress_tokens in source.json; decoding without suppression", checkpoint)
    # Whisper's sample_len: half the decoder context.
    limit = config.max_target_positions - len(self.prompt) + 1
    self.max_new_tokens = int(getattr(args, "max_new_tokens", None) or
                              min(config.max_target_positions // 2, limit))
    if not 0 < self.max_new_tokens <= limit:
      raise EvalError(f"--max-new-tokens {self.max_new_tokens}: this model decodes at most {limit} "
                      f"tokens after its {len(self.prompt)}-token prompt")
    self.batch_size = int(args.batch_size)
    self.full_30s = not getattr(args, "bucketed", False)
    seconds = getattr(args, "bucket_seconds", DEFAULT_BUCKET_SECONDS)
    self.buckets = (CHUNK_SAMPLES,) if self.full_30s else bucket_widths(seconds)
    self.stride = int(round(float(getattr(args, "chunk_stride", 5.0)) * SAMPLE_RATE))
    chunk_windows(2 * CHUNK_SAMPLES, stride=self.stride)  # validates the stride
    import llada_jax

    try:
      self.model = llada_jax.load(checkpoint)
    except (ckpt.CheckpointError, OSError, ValueError) as e:
      raise EvalError(f"--checkpoint {checkpoint}: {e}") from e
    self.config = config
    from flax import nnx

    self._graphdef, self._state = nnx.split(self.model)
    rows = getattr(args, "encoder_rows", None)
    if rows is None and jax_backend() == "cpu":
      rows = 1
    self.encoder_rows = None if rows is None else max(1, int(rows))
    self.info = {"encoder_input": "30s" if self.full_30s else "bucketed",
                 "buckets_seconds": [round(b / SAMPLE_RATE, 4) for b in self.buckets],
                 "prompt_ids": self.prompt, "eos_id": self.eos_id,
                 "suppressed_tokens": len(self.suppress), "max_new_tokens": self.max_new_tokens,
                 "encoder_rows": self.encoder_rows, "backend": jax_backend()}

  def _special(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise EvalError(f"tokenizer.json has no special token {token}")
    return int(i)

  def _executable(self, batch: int, width: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llada_jax import features, whisper

    frames = features.num_frames(width)
    graphdef, state = self._graphdef, self._state
    key = (graphdef, batch, width, frames, len(self.prompt), self.max_new_tokens, self.eos_id,
           self.suppress, self.begin_suppress, self.encoder_rows)
    exe = _EXECUTABLES.get(key)
    if exe is None:
      n_mels, max_new, eos = self.config.n_mels, self.max_new_tokens, self.eos_id
      suppress, begin, rows = list(self.suppress), list(self.begin_suppress), self.encoder_rows

      def decode(state, audio, prompt):
        model = nnx.merge(graphdef, state)
        mel = features.log_mel(audio, n_mels=n_mels, frames=frames)
        return whisper.greedy_decode(model, mel, prompt, max_new, eos, suppress_ids=suppress,
                                     begin_suppress_ids=begin, return_probs=True,
                                     encoder_rows=rows)

      start = time.perf_counter()
      audio = jax.ShapeDtypeStruct((batch, width), jnp.float32)
      prompt = jax.ShapeDtypeStruct((batch, len(self.prompt)), jnp.int32)
      exe = jax.jit(decode).lower(state, audio, prompt).compile()
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      shape = f"batch {batch} × {frames} mel frames (audio ≤ {width / SAMPLE_RATE:.2f} s)"
      self.compiled_shapes.append(shape)
      log.info("whisper: compiled %s in %.1f s", shape, seconds)
      _EXECUTABLES[key] = exe
    return exe, state

  def _decode(self, audio: np.ndarray) -> list[tuple[str, list[float]]]:
    exe, state = self._executable(audio.shape[0], audio.shape[1])
    prompt = np.tile(np.asarray(self.prompt, np.int32), (audio.shape[0], 1))
    tokens, probs = exe(state, audio, prompt)
    tokens, probs = np.asarray(tokens), np.asarray(probs)
    out = []
    for row, p in zip(tokens, probs):
      n = int(np.argmax(row == self.eos_id)) if (row == self.eos_id).any() else row.shape[0]
      text = self.tokenizer.decode([int(t) for t in row[:n]], skip_special_tokens=True).strip()
      out.append((text, [round(float(x), 6) for x in p[:n]]))
    return out

  def transcribe(self, batch: dict) -> list[tuple[str, list[float] | None] | Exception]:
    audio = np.asarray(batch["audio"], np.float32)
    if audio.shape[1] <= CHUNK_SAMPLES:
      return self._decode(audio)
    return self._transcribe_long(audio, batch["audio_len"], batch["valid"])

  def _transcribe_long(self, audio: np.ndarray, lengths: np.ndarray, valid: np.ndarray):
    """Every valid row cut into overlapping 30 s windows, decoded in batches, merged per row.
    Merged transcripts have no per-token confidences (words of two windows are spliced)."""
    pieces, owners = [], []
    for r in np.flatnonzero(valid):
      for start, end in chunk_windows(int(lengths[r]), stride=self.stride):
        pieces.append(audio[r, start:end])
        owners.append(int(r))
    texts: list[str] = []
    for start in range(0, len(pieces), self.batch_size):
      group = np.zeros((self.batch_size, CHUNK_SAMPLES), np.float32)
      for i, piece in enumerate(pieces[start:start + self.batch_size]):
        group[i, :piece.shape[0]] = piece
      texts.extend(t for t, _ in self._decode(group)[:len(pieces[start:start + self.batch_size])])
    out: list[tuple[str, list[float] | None] | Exception] = [("", None)] * audio.shape[0]
    for r in set(owners):
      out[r] = (merge_chunks([t for t, o in zip(texts, owners) if o == r]), None)
    return out


def jax_backend() -> str:
  import jax

  return jax.default_backend()


STRATEGIES: dict[str, tp.Any] = {
    "whisper": WhisperStrategy,
    "ar": "llada_jax.eval_llada:ARStrategy",
    "diffusion": "llada_jax.eval_llada:DiffusionStrategy",
    "semi_ar": "llada_jax.eval_llada:SemiARStrategy",
    "deliberation": "llada_jax.eval_llada:DeliberationStrategy",
}


def get_strategy(name: str):
  """The strategy class (or factory) registered as `name`, importing "module:Class" entries."""
  if name not in STRATEGIES:
    raise EvalError(f"--strategy {name!r}: unknown; known: {sorted(STRATEGIES)}")
  entry = STRATEGIES[name]
  if isinstance(entry, str):
    module, _, attr = entry.partition(":")
    entry = getattr(importlib.import_module(module), attr)
  return entry


# ---------------------------------------------------------------------------------------------
# Data


class _Subset:
  """Some utterances of a source (by index), with its lengths and error records."""

  def __init__(self, source, indices: np.ndarray, errors: list[ErrorRecord]):
    self.base, self.indices = source, np.asarray(indices, np.int64)
    self._lengths = np.asarray(source.lengths(), np.int64)[self.indices]
    self.errors = errors
    if hasattr(source, "utterances"):
      self.utterances = [source.utterances[int(i)] for i in self.indices]
    self.name = getattr(source, "name", "?")

  def __len__(self) -> int:
    return int(self.indices.shape[0])

  def lengths(self) -> np.ndarray:
    return self._lengths

  def __getitem__(self, i: int) -> dict:
    return self.base[int(self.indices[int(i)])]


def _utt_id(source, i: int) -> str:
  utts = getattr(source, "utterances", None)
  if utts is not None:
    return utts[i].id
  try:  # a tfds record: its id is stored with the audio
    return str(source[i]["id"])
  except Exception:  # noqa: BLE001 - only for naming an error record
    return f"#{i}"


def open_data(args: argparse.Namespace, max_seconds: float | None) -> tuple[_Subset, dict]:
  """The usable utterances of `args.data` (limited, length-filtered) and refs by id for errors."""
  try:
    source = pipeline.open_source(args.data, args.tfds_data_dir, strict=args.strict)
  except (librispeech.CorpusError, FileNotFoundError, ImportError, ValueError, OSError) as e:
    raise EvalError(f"--data {args.data}: {e}") from e
  if args.limit is not None and isinstance(source, pipeline.FolderSource):
    # Before reading lengths: --limit should not have to read every file header of a big corpus.
    source = pipeline.FolderSource(librispeech.Scan(source.utterances[:args.limit], source.errors))
  count = len(source) if args.limit is None else min(len(source), args.limit)
  lengths = np.asarray(source.lengths(), np.int64)[:count]
  errors = list(source.errors)
  refs = {u.id: u.text for u in getattr(source, "utterances", [])}
  keep = []
  for i in range(count):
    if lengths[i] < 0:
      continue  # unreadable: the source has its error record
    if max_seconds is not None:
      try:
        check_max_duration(lengths[i] / SAMPLE_RATE, max_seconds)
      except DurationError as e:
        utts = getattr(source, "utterances", None)
        errors.append(ErrorRecord(_utt_id(source, i), utts[i].path if utts else f"[{i}]", str(e)))
        continue
    keep.append(i)
  if args.strict and errors:
    shown = "\n  ".join(f"{e.path}: {e.reason}" for e in errors[:20])
    raise EvalError(f"--strict: {len(errors)} problem(s) in {args.data}:\n  {shown}")
  return _Subset(source, np.asarray(keep, np.int64), errors), refs


def batch_buckets(buckets: tp.Sequence[int], lengths: np.ndarray) -> tuple[int, ...]:
  """The strategy's buckets plus, for audio longer than the last, widths in 20 s steps."""
  out = set(int(b) for b in buckets)
  for n in lengths[lengths > max(out)]:
    out.add(int(math.ceil(n / LONG_STEP_SAMPLES) * LONG_STEP_SAMPLES))
  return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# Outputs


def write_atomic(path: str | os.PathLike, text: str) -> None:
  """Write `text` to a temp file beside `path`, fsync, rename: readers see all or nothing."""
  path = Path(path)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _error_record(e: ErrorRecord, refs: dict) -> dict:
  return {"id": e.id, "ref": refs.get(e.id) if e.id else None, "hyp": None, "error": e.reason,
          "path": e.path}


def _jsonable(value):
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  return str(value)


def format_table(summary: dict) -> str:
  wer = "—" if summary["wer"] is None else f"{100 * summary['wer']:.2f}"
  rtf = "—" if summary["rtf"] is None else f"{summary['rtf']:.4f}"
  head = ["strategy", "utts", "errors", "WER %", "RTF", "audio s", "decode s", "compile s"]
  row = [summary["strategy"], str(summary["num_utts"]), str(summary["num_errors"]), wer, rtf,
         f"{summary['audio_seconds']:.1f}", f"{summary['decode_seconds']:.2f}",
         f"{summary['compile_seconds']:.2f}"]
  widths = [max(len(h), len(r)) for h, r in zip(head, row)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class _Timer:
  decode: float = 0.0
  compile: float = 0.0


def _transcribe(strategy, batch: dict, timer: _Timer, warmed: set) -> list:
  own = hasattr(strategy, "compile_seconds")
  shape = tuple(np.shape(batch["audio"]))
  if not own and shape not in warmed:
    start = time.perf_counter()
    strategy.transcribe(batch)  # warm-up: compiles this shape; the timed call below is warm
    timer.compile += time.perf_counter() - start
    log.info("%s: warm-up on batch shape %s took %.1f s", strategy.name, shape,
             time.perf_counter() - start)
  warmed.add(shape)
  before = strategy.compile_seconds if own else 0.0
  start = time.perf_counter()
  results = strategy.transcribe(batch)
  elapsed = time.perf_counter() - start
  if own:
    compiled = strategy.compile_seconds - before
    timer.compile += compiled
    elapsed -= compiled
  timer.decode += elapsed
  if len(results) != len(batch["valid"]):
    raise RuntimeError(f"{strategy.name}.transcribe returned {len(results)} results for a batch of "
                       f"{len(batch['valid'])}")
  return results


def run(args: argparse.Namespace) -> dict:
  """Evaluate; writes OUT/hyps.jsonl and OUT/summary.json and returns the summary."""
  from tqdm import tqdm

  start = time.perf_counter()
  strategy = get_strategy(args.strategy)()
  if not isinstance(args.batch_size, int) or args.batch_size < 1:
    raise EvalError(f"--batch-size {args.batch_size}: expected a positive integer")
  # prepare first: a strategy may set its duration cap from the checkpoint (Whisper-LLaDA: the
  # run's mel frames), and open_data turns longer utterances into error records.
  strategy.prepare(args.checkpoint, args)
  data, refs = open_data(args, getattr(strategy, "max_seconds", None))
  out = Path(args.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise EvalError(f"--out {out}: {e}") from e

  records = [_error_record(e, refs) for e in data.errors]
  timer, warmed = _Timer(), set()
  audio_seconds = 0.0
  if len(data):
    buckets = batch_buckets(getattr(strategy, "buckets", (CHUNK_SAMPLES,)), data.lengths())
    config = pipeline.PipelineConfig(batch_size=args.batch_size, buckets=buckets, shuffle=False,
                                     num_epochs=1, too_long="trim", num_threads=2, prefetch=2)
    batches = pipeline.AudioBatches(data, config, process_index=0, process_count=1)
    bar = tqdm(total=len(data), unit="utt", desc=args.strategy, disable=args.quiet or None)
    for batch in batches:
      for e in batch["errors"]:
        if args.strict:
          raise EvalError(f"--strict: {e.path}: {e.reason}")
        records.append(_error_record(e, refs))
      valid = np.flatnonzero(batch["valid"])
      if valid.shape[0]:
        try:
          results = _transcribe(strategy, batch, timer, warmed)
        except (UtteranceError, AudioError) as e:
          if args.strict:
            raise EvalError(f"--strict: {batch['ids'][valid[0]]}…: {e}") from e
          results = [e] * len(batch["valid"])
        for r in valid:
          utt_id, result = batch["ids"][r], results[r]
          seconds = float(batch["audio_len"][r]) / SAMPLE_RATE
          if isinstance(result, Exception):
            if args.strict:
              raise EvalError(f"--strict: {utt_id}: {result}") from result
            records.append({"id": utt_id, "ref": batch["text"][r], "hyp": None,
                            "error": f"{type(result).__name__}: {result}", "path": None})
            continue
          hyp, conf = result
          audio_seconds += seconds
          records.append({"id": utt_id, "ref": batch["text"][r], "hyp": hyp,
                          "confidences": None if conf is None else [float(c) for c in conf],
                          "seconds": round(seconds, 4)})
      bar.update(int(batch["valid"].sum()) + len(batch["errors"]))
    bar.close()

  from llada_jax import text

  records.sort(key=lambda r: (r["id"] or "", r.get("path") or ""))
  done = [r for r in records if "error" not in r]
  summary = {
      "strategy": args.strategy,
      "checkpoint": str(args.checkpoint),
      "data": str(args.data),
      "wer": text.wer([r["ref"] for r in done], [r["hyp"] for r in done]) if done else None,
      "rtf": timer.decode / audio_seconds if audio_seconds else None,
      "num_utts": len(done),
      "num_errors": len(records) - len(done),
      "audio_seconds": round(audio_seconds, 3),
      "decode_seconds": round(timer.decode, 4),
      "compile_seconds": round(timer.compile, 4),
      "wall_seconds": round(time.perf_counter() - start, 4),
      "compiled_shapes": list(getattr(strategy, "compiled_shapes", [])),
      "strategy_info": _jsonable(getattr(strategy, "info", {})),
      "args": _jsonable(vars(args)),
  }
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  write_atomic(out / "hyps.jsonl", lines)
  write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description or __doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="converted checkpoint folder")
  p.add_argument("--data", required=True,
                 help="LibriSpeech-layout split folder, or tfds:NAME/SPLIT")
  p.add_argument("--out", required=True, help="output folder (hyps.jsonl, summary.json)")
  p.add_argument("--strategy", required=True, help=f"one of {sorted(STRATEGIES)}")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--limit", type=int, default=None, help="first N utterances (by id) only")
  p.add_argument("--strict", action="store_true", help="stop at the first bad file or utterance")
  p.add_argument("--tfds-data-dir", default=None, help="where tfds:NAME/SPLIT was prepared")
  p.add_argument("--max-new-tokens", type=int, default=None, help="decoding length cap")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  added = set()  # strategies sharing one option group (the Whisper-LLaDA ones) add it once
  for name in sorted(STRATEGIES):
    entry = STRATEGIES[name]
    if isinstance(entry, str):
      try:
        entry = get_strategy(name)
      except ImportError as e:  # one broken strategy module must not break the others' CLI
        log.warning("strategy %s unavailable: %s", name, e)
        continue
    add_args = getattr(entry, "add_args", None)
    if add_args is not None and add_args not in added:
      added.add(add_args)
      add_args(p)
  return p


def parse_args(argv: tp.Sequence[str] | None = None, description: str | None = None
               ) -> argparse.Namespace:
  parser = build_parser(description)
  args = parser.parse_args(argv)
  if args.strategy not in STRATEGIES:
    parser.error(f"--strategy {args.strategy!r}: choose from {sorted(STRATEGIES)}")
  if args.limit is not None and args.limit < 1:
    parser.error("--limit must be ≥ 1")
  if args.batch_size < 1:
    parser.error("--batch-size must be ≥ 1")
  return args


def main(argv: tp.Sequence[str] | None = None, description: str | None = None) -> int:
  args = parse_args(argv, description)
  # Our own handler: absl (imported by tfds/orbax) may already own the root logger, which would
  # swallow the compile notices (whisper-jax's users took silent compiles for slowness).
  ours = logging.getLogger("llada_jax")
  if not any(getattr(h, "_llada_eval", False) for h in ours.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._llada_eval = True
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
  try:
    summary = run(args)
  except EvalError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(summary))
  print(f"wrote {Path(args.out) / 'hyps.jsonl'} and {Path(args.out) / 'summary.json'}")
  return 0
