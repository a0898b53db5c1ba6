"""What an evaluation reads: the usable utterances of a data spec, and first-pass hypotheses."""

from __future__ import annotations

import dataclasses
import json
import typing as tp
from pathlib import Path

import numpy as np

from llada_jax.data import librispeech, pipeline
from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.data.files import FilesSource
from llada_jax.data.librispeech import ErrorRecord
from llada_jax.data.manifest import ManifestSource
from llada_jax.inference.errors import DurationError
from llada_jax.inference.transcriber import check_max_duration


class EvalError(RuntimeError):
  """The run cannot go on: a broken data spec or checkpoint, or (with --strict) bad data."""


class Subset:
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


def open_data(spec: str, *, data_dir: str | None = None, limit: int | None = None,
              strict: bool = False, max_seconds: float | None = None
              ) -> tuple[Subset, dict[str, str]]:
  """The usable utterances of `spec` (the first `limit`, length-filtered when `max_seconds` is
  given: longer is an error record) and the references by id, for error records."""
  try:
    source = pipeline.open_source(spec, data_dir, strict=strict)
  except (librispeech.CorpusError, FileNotFoundError, ImportError, ValueError, OSError) as e:
    raise EvalError(f"data {spec}: {e}") from e
  if limit is not None and isinstance(source, pipeline.FolderSource):
    # Before reading lengths: --limit should not have to read every file header of a big corpus.
    source = pipeline.FolderSource(librispeech.Scan(source.utterances[:limit], source.errors))
  elif limit is not None and isinstance(source, (ManifestSource, FilesSource)):
    source = source.head(limit)
  count = len(source) if limit is None else min(len(source), limit)
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
  if strict and errors:
    shown = "\n  ".join(f"{e.path}: {e.reason}" for e in errors[:20])
    raise EvalError(f"strict: {len(errors)} problem(s) in {spec}:\n  {shown}")
  return Subset(source, np.asarray(keep, np.int64), errors), refs


def read_first_pass(path: str | Path) -> dict[str, str]:
  """{id: hypothesis} of another run's hyps.jsonl (its error records are left out)."""
  path = Path(path)
  if not path.is_file():
    raise EvalError(f"first pass {path}: no such file")
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise EvalError(f"first pass {path}: not readable: {e}") from e
  out: dict[str, str] = {}
  for n, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
    except (ValueError, RecursionError) as e:
      # ValueError: bad JSON, or an int of over 4300 digits; RecursionError: deep nesting
      raise EvalError(f"first pass {path}:{n}: not JSON ({e})") from None
    if not isinstance(row, dict):
      raise EvalError(f"first pass {path}:{n}: expected an object, got {line:.80}")
    if row.get("hyp") is None or "id" not in row:
      continue  # an error record (hyp null), or not an utterance
    if not isinstance(row["id"], str) or not isinstance(row["hyp"], str):
      raise EvalError(f"first pass {path}:{n}: \"id\" and \"hyp\" must be strings, got "
                      f"{line:.80}")
    out[row["id"]] = row["hyp"]
  return out



@dataclasses.dataclass(frozen=True)
class FirstPass:
  """Deliberation's input per utterance id, and where it came from (for a missing one's record)."""

  texts: tp.Mapping[str, str]
  origin: str  # "--first-pass FILE" or "FILE.json's origin_transcripts"
  missing: tp.Callable[[str], str]  # id → why it has none


def first_pass(path: str | None, data: Subset, spec: str) -> FirstPass:
  """`--first-pass` hyps.jsonl when given, else the origin_transcripts of a JSON data file."""
  if path:
    return FirstPass(read_first_pass(path), f"--first-pass {path}",
                     lambda utt: f"{utt}: no first-pass hypothesis in {path}")
  source = data.base
  if not isinstance(source, ManifestSource):
    raise EvalError(f"deliberation needs a first pass (RunSettings.first_pass: another run's "
                    f"hyps.jsonl) or a JSON data file whose entries have origin_transcripts; data "
                    f"{spec} is neither")
  if not source.first_pass and len(source):
    raise EvalError(f"deliberation: no entry of {spec} has \"origin_transcripts\" (the first "
                    f"pass); give RunSettings.first_pass (another run's hyps.jsonl)")
  return FirstPass(source.first_pass, f"{spec}'s origin_transcripts",
                   lambda utt: f"{source.where(utt)}: no \"origin_transcripts\"")
