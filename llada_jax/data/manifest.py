"""Diffusion-ASR's JSON data files as a data source (`eval.py --data FILE.json`,
`train.py --set data.train=FILE.json`).

The format their `dataset.py` (training) and `inference.py` (decoding) read:

    {"annotation": [{"path": "/data/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac",
                     "text": "HE HOPED THERE WOULD BE STEW FOR DINNER …", "task": "asr"},
                    {"path": …, "text": …, "origin_transcripts": "…"},   # deliberation input
                    …]}

- Order: the file's (their inference.py writes its predictions in it).
- `path` is used as written: a relative one is relative to the working directory, as their
  `sf.read(item["path"])` reads it.
- Ids: the file stem of `path` (LibriSpeech's flac names are its utterance ids). Entries whose
  stems coincide but whose paths differ (`spk1/a.wav`, `spk2/a.wav`) each get `STEM@INDEX`, INDEX
  the entry's position in `annotation`: unique, and the same in every run over the file.
- `text` is kept as written (their predictions file repeats it; scoring normalises it).
- `origin_transcripts`: the first pass a deliberation run re-fills (`first_pass`).
- `task` is not read: their model prompts "Transcribe the audio:" whatever it says. `expand_wav`
  (audio their training-time dataset appends) is not applied; a warning counts such entries.

Bad entries never stop a read: each becomes an `ErrorRecord` whose reason starts with
`annotation[INDEX]` and whose path is the entry's: not an object, no `path`, a missing file, a file
that is not audio (found when `lengths()` reads the headers), an empty `text`, a path given twice
(the first kept), an id taken twice, an `origin_transcripts` that is not a string. `strict=True`
reads every header up front and raises `ManifestError` listing them all.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from llada_jax.data.audio import AudioError, audio_length, load_audio
from llada_jax.data.librispeech import CorpusError, ErrorRecord, Utterance

log = logging.getLogger(__name__)


class ManifestError(CorpusError):
  """The file is not a Diffusion-ASR data file, or (with strict=True) some entries are bad."""


def is_manifest(spec: str | os.PathLike) -> bool:
  """Whether a data spec names a JSON data file (by its extension)."""
  return os.fspath(spec).lower().endswith(".json")


def _annotation(path: str) -> list:
  if not os.path.isfile(path):
    raise ManifestError(f"{path}: no such file (expected a Diffusion-ASR JSON data file)")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
    raise ManifestError(f"{path}: not readable as JSON: {e}") from e
  entries = data.get("annotation") if isinstance(data, dict) else None
  if not isinstance(entries, list):
    raise ManifestError(f"{path}: expected {{\"annotation\": [{{\"path\": …, \"text\": …}}, …]}} "
                        f"(Diffusion-ASR's data format), found no \"annotation\" list")
  if not entries:
    raise ManifestError(f"{path}: \"annotation\" is empty")
  return entries


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


class ManifestSource:
  """The usable entries of a data file as a pipeline `Source`; audio decoded on access.

  `utterances` (file order), `first_pass` ({id: origin_transcripts}), `errors`."""

  def __init__(self, path: str | os.PathLike, strict: bool = False):
    self.name = os.fspath(path)
    entries = _annotation(self.name)
    self.errors: list[ErrorRecord] = []
    self.utterances: list[Utterance] = []
    self.first_pass: dict[str, str] = {}
    self._index: dict[str, int] = {}  # id → position in "annotation"
    self._paths: dict[str, str] = {}
    self._lengths: np.ndarray | None = None
    paths = [e.get("path") if isinstance(e, dict) else None for e in entries]
    ids = self._ids(paths)
    seen_paths: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    expand = 0
    for i, (entry, audio) in enumerate(zip(entries, paths)):
      where = f"annotation[{i}]"
      if not isinstance(entry, dict):
        self._bad(None, f"{self.name}: {where}", f"{where}: not an object: {entry!r:.80}")
        continue
      if not isinstance(audio, str) or not audio.strip():
        self._bad(None, f"{self.name}: {where}", f"{where}: no \"path\"")
        continue
      utt_id, text, first = ids[i], entry.get("text"), entry.get("origin_transcripts")
      key = os.path.normpath(os.path.abspath(audio))
      if key in seen_paths:
        self._bad(utt_id, audio, f"{where}: duplicate path (annotation[{seen_paths[key]}] kept)")
      elif utt_id in seen_ids:
        self._bad(utt_id, audio,
                  f"{where}: duplicate id {utt_id!r} (annotation[{seen_ids[utt_id]}] kept)")
      elif not os.path.isfile(audio):
        self._bad(utt_id, audio, f"{where}: no such file")
      elif not isinstance(text, str) or not text.strip():
        self._bad(utt_id, audio, f"{where}: empty \"text\"")
      elif first is not None and not isinstance(first, str):
        self._bad(utt_id, audio, f"{where}: \"origin_transcripts\" is not a string: {first!r:.80}")
      else:
        seen_paths[key], seen_ids[utt_id] = i, i
        self._index[utt_id], self._paths[utt_id] = i, audio
        self.utterances.append(Utterance(utt_id, audio, text, ""))
        if first is not None:
          self.first_pass[utt_id] = first
        expand += "expand_wav" in entry
    if expand:
      log.warning("%s: %d entr%s with \"expand_wav\": only \"path\" is read (as their "
                  "inference.py does; their training dataset appends those files)", self.name,
                  expand, "y" if expand == 1 else "ies")
    if strict:
      self.lengths()
      if self.errors:
        shown = "\n  ".join(f"{e.path}: {e.reason}" for e in self.errors[:20])
        more = f"\n  … and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        raise ManifestError(f"{self.name}: {len(self.errors)} bad entr"
                            f"{'y' if len(self.errors) == 1 else 'ies'}:\n  {shown}{more}")

  @staticmethod
  def _ids(paths: list) -> list[str | None]:
    """Stems, with `STEM@INDEX` for every entry whose stem another path shares."""
    by_stem: dict[str, set[str]] = {}
    for p in paths:
      if isinstance(p, str) and p.strip():
        by_stem.setdefault(_stem(p), set()).add(os.path.normpath(os.path.abspath(p)))
    out: list[str | None] = []
    for i, p in enumerate(paths):
      if not isinstance(p, str) or not p.strip():
        out.append(None)
      else:
        stem = _stem(p)
        out.append(stem if len(by_stem[stem]) == 1 else f"{stem}@{i}")
    return out

  def _bad(self, utt_id: str | None, path: str, reason: str) -> None:
    self.errors.append(ErrorRecord(utt_id, path, reason))

  def where(self, utt_id: str) -> str:
    """"annotation[INDEX] (PATH)" of a usable entry, for messages about it."""
    return f"annotation[{self._index[utt_id]}] ({self._paths[utt_id]})"

  def head(self, n: int) -> ManifestSource:
    """The first `n` usable entries (file order), with every error record of the file."""
    out = object.__new__(ManifestSource)
    out.name, out.errors = self.name, list(self.errors)
    out.utterances = self.utterances[:n]
    keep = {u.id for u in out.utterances}
    out.first_pass = {k: v for k, v in self.first_pass.items() if k in keep}
    out._index = {k: v for k, v in self._index.items() if k in keep}
    out._paths = {k: v for k, v in self._paths.items() if k in keep}
    out._lengths = None if self._lengths is None else self._lengths[:n]
    return out

  def __len__(self) -> int:
    return len(self.utterances)

  def lengths(self) -> np.ndarray:
    if self._lengths is None:
      self._lengths = np.asarray([self._length(u) for u in self.utterances], np.int64)
    return self._lengths

  def _length(self, utt: Utterance) -> int:
    try:
      return audio_length(utt.path)
    except AudioError as e:
      self._bad(utt.id, utt.path, f"annotation[{self._index[utt.id]}]: {e}")
    return -1

  def __getitem__(self, i: int) -> dict:
    u = self.utterances[int(i)]
    return {"id": u.id, "audio": load_audio(u.path), "text": u.text, "speaker": u.speaker}

