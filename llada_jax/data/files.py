"""Audio files in any layout as a data source: a folder (searched recursively), a glob pattern, a
single file, or a list of paths (`eval.py --data`, `llada-jax transcribe AUDIO…`).

    folder/            every audio file below it, by extension (AUDIO_EXTENSIONS; names starting
                       with "." skipped), sorted; ids: the path relative to the folder
    "clips/**/*.mp3"   what the pattern matches (`**` spans folders; folders skipped), sorted; ids:
                       the matched paths
    list.txt           one path per line (.txt, .lst, .list; blank and "#" lines skipped)
    list.jsonl         {"path": …, "text": …} per line ("text" optional: the reference)
    audio.m4a          one file (the transcribe command; `open_source` reads folders, globs and
                       lists only)

A listed path is used as written, relative to the working directory (as Diffusion-ASR's JSON data
files are read), and is its id. Files without a transcript have `text` None: evaluation writes no
reference for them and leaves them out of the WER.

Bad entries never stop a listing: each becomes an `ErrorRecord` naming the path (or LIST:LINE):
a listed file that is missing, a JSONL line that is not an object with a "path", the same file
twice (the first kept); an unreadable audio file is found when `lengths()` reads the headers. A spec
that names nothing (no such path, a pattern without matches, a folder or list without audio) is a
`FilesError`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import typing as tp

import numpy as np

from llada_jax.data.audio import AudioError, audio_length, load_audio
from llada_jax.data.librispeech import CorpusError, ErrorRecord

# Found in folders; a glob, a list or a file named directly may hold any extension FFmpeg reads.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".m4b", ".aac",
                    ".mp4", ".webm", ".weba", ".mka", ".wma", ".aif", ".aiff", ".aifc", ".au",
                    ".caf", ".amr", ".spx", ".w64", ".rf64", ".wv", ".ac3")
TEXT_LISTS = (".txt", ".lst", ".list")
JSONL_LISTS = (".jsonl",)


class FilesError(CorpusError):
  """A spec that names no audio: no such path, a pattern without matches, nothing to read."""


@dataclasses.dataclass(frozen=True)
class AudioFile:
  id: str  # unique within a listing
  path: str  # the folder joined with the relative path, the matched path, or as listed
  text: str | None = None  # reference transcript, where a JSONL list gives one
  speaker: str = ""


class Listing(tp.NamedTuple):
  files: list[AudioFile]
  errors: list[ErrorRecord]
  repeats: tuple[ErrorRecord, ...] = ()  # a file listed again: an error record for a data source


def is_list(spec: str | os.PathLike) -> bool:
  """Whether a spec names a list of paths (by its extension)."""
  return os.fspath(spec).lower().endswith(TEXT_LISTS + JSONL_LISTS)


def is_pattern(spec: str | os.PathLike) -> bool:
  """Whether a spec is a glob pattern: it has `*`, `?` or `[` and names no existing path."""
  spec = os.fspath(spec)
  return glob.has_magic(spec) and not os.path.exists(spec)


def is_audio_name(name: str) -> bool:
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def list_audio(spec: str | os.PathLike) -> Listing:
  """The audio files a spec names (see the module docstring); FilesError if it names none."""
  spec = os.fspath(spec)
  if is_pattern(spec):
    found = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
    if not found:
      raise FilesError(f"{spec}: the pattern matches no files")
    return _unique([AudioFile(p, p) for p in found], [])
  if os.path.isdir(spec):
    return _folder(spec)
  if is_list(spec):
    if not os.path.isfile(spec):
      raise FilesError(f"{spec}: no such list file")
    return _jsonl(spec) if spec.lower().endswith(JSONL_LISTS) else _text_list(spec)
  if os.path.isfile(spec):
    return Listing([AudioFile(spec, spec)], [])
  raise FilesError(f"{spec}: no such folder or file (nor a glob pattern with matches)")


def list_many(specs: tp.Sequence[str | os.PathLike]) -> Listing:
  """Several specs in order; a file named twice (across specs, too) is kept once, silently: the
  command line `dir dir/a.wav` means each file once. Ids are the paths."""
  files, errors, seen = [], [], set()
  for spec in specs:
    listing = list_audio(spec)
    errors += listing.errors  # not its repeats
    for f in listing.files:
      key = path_key(f.path)
      if key not in seen:
        seen.add(key)
        files.append(AudioFile(f.path, f.path, f.text, f.speaker))
  return Listing(files, errors)


def path_key(path: str) -> str:
  """One spelling per file: `a.wav`, `./a.wav` and its absolute path are the same key."""
  return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def _folder(root: str) -> Listing:
  files, errors = [], []

  def unreadable(e: OSError) -> None:
    errors.append(ErrorRecord(None, e.filename or root, f"unreadable folder: {e.strerror or e}"))

  for folder, dirs, names in os.walk(root, onerror=unreadable):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if is_audio_name(name):
        path = os.path.join(folder, name)
        files.append(AudioFile(os.path.relpath(path, root).replace(os.sep, "/"), path))
  if not files:
    raise FilesError(f"{root}: no audio files below it ({', '.join(AUDIO_EXTENSIONS[:6])}, …)"
                     + (f"; {errors[0].path}: {errors[0].reason}" if errors else ""))
  files.sort(key=lambda f: f.id)
  return Listing(files, errors)


def _read_lines(path: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise FilesError(f"{path}: not readable as a list of paths: {e}") from e


def _text_list(path: str) -> Listing:
  entries = [(f"{path}:{n}", line.strip()) for n, line in enumerate(_read_lines(path), 1)
             if line.strip() and not line.lstrip().startswith("#")]
  if not entries:
    raise FilesError(f"{path}: lists no paths")
  return _unique([AudioFile(p, p) for _, p in entries], [], [w for w, _ in entries])


def _jsonl(path: str) -> Listing:
  files, errors, where = [], [], []
  lines = _read_lines(path)
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    at = f"{path}:{n}"
    try:
      row = json.loads(line)
    except (ValueError, RecursionError) as e:
      # ValueError: bad JSON, or an int of over 4300 digits; RecursionError: deep nesting
      errors.append(ErrorRecord(None, at, f"{at}: not JSON ({e})"))
      continue
    audio = row.get("path") if isinstance(row, dict) else None
    if not isinstance(audio, str) or not audio.strip():
      errors.append(ErrorRecord(None, at, f"{at}: expected {{\"path\": …}}, got {line:.80}"))
      continue
    ref = row.get("text")
    if ref is not None and not isinstance(ref, str):
      errors.append(ErrorRecord(audio, audio, f"{at}: \"text\" is not a string: {ref!r:.80}"))
      continue
    files.append(AudioFile(audio, audio, ref))
    where.append(at)
  if not files and not errors:
    raise FilesError(f"{path}: lists no paths")
  return _unique(files, errors, where)


def _unique(files: list[AudioFile], errors: list[ErrorRecord],
            where: list[str] | None = None) -> Listing:
  """Listed files that exist, each once (the first kept); the others are error records (a
  repeat in `repeats`)."""
  out, seen, repeats = [], {}, []
  for i, f in enumerate(files):
    at = f"{where[i]}: " if where else ""
    key = path_key(f.path)
    if key in seen:
      repeats.append(ErrorRecord(f.id, f.path, f"{at}listed again ({seen[key]} kept)"))
    elif not os.path.isfile(f.path):
      errors.append(ErrorRecord(f.id, f.path, f"{at}no such file"))
    else:
      seen[key] = where[i] if where else f.path
      out.append(f)
  return Listing(out, errors, tuple(repeats))


class FilesSource:
  """The files of a spec as a pipeline `Source`; audio decoded on access (soundfile, else PyAV),
  16 kHz mono. `utterances` (AudioFile, listing order), `errors`."""

  def __init__(self, spec: str | os.PathLike, strict: bool = False):
    self.name = os.fspath(spec)
    listing = list_audio(self.name)
    self.utterances: list[AudioFile] = listing.files
    self.errors: list[ErrorRecord] = [*listing.errors, *listing.repeats]
    self._lengths: np.ndarray | None = None
    if strict:
      self.lengths()
      if self.errors:
        shown = "\n  ".join(f"{e.path}: {e.reason}" for e in self.errors[:20])
        raise FilesError(f"{self.name}: {len(self.errors)} bad file(s):\n  {shown}")

  def head(self, n: int) -> FilesSource:
    """The first `n` files, with every error record of the listing."""
    out = object.__new__(FilesSource)
    out.name, out.errors, out.utterances = self.name, list(self.errors), self.utterances[:n]
    out._lengths = None if self._lengths is None else self._lengths[:n]
    return out

  def __len__(self) -> int:
    return len(self.utterances)

  def lengths(self) -> np.ndarray:
    if self._lengths is None:
      self._lengths = np.asarray([self._length(f) for f in self.utterances], np.int64)
    return self._lengths

  def _length(self, f: AudioFile) -> int:
    try:
      return audio_length(f.path)
    except AudioError as e:
      self.errors.append(ErrorRecord(f.id, f.path, str(e)))
    return -1

  def __getitem__(self, i: int) -> dict:
    f = self.utterances[int(i)]
    return {"id": f.id, "audio": load_audio(f.path), "text": f.text, "speaker": f.speaker}
