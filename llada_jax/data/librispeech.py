"""Scan a LibriSpeech-layout folder: SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.{flac,wav,ogg} +
transcripts.

Layout (as in the official tarballs, one split folder such as `LibriSpeech/test-clean`):

    ROOT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt   lines "SPEAKER-CHAPTER-UTT TRANSCRIPT"
    ROOT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac

Bad data never stops a scan over a corpus of 280k files: each problem becomes an `ErrorRecord`
(unless `strict=True`). Audio is not decoded here; that is the pipeline's per-utterance job.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp

AUDIO_EXTS = (".flac", ".wav", ".ogg")  # preference order when one id has several files


class CorpusError(ValueError):
  """The corpus spec is not a LibriSpeech folder, or (with strict=True) the folder holds bad
  data."""


@dataclasses.dataclass(frozen=True)
class Utterance:
  id: str
  path: str
  text: str
  speaker: str


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
  id: str | None
  path: str
  reason: str


class Scan(tp.NamedTuple):
  utterances: list[Utterance]
  errors: list[ErrorRecord]


def _subdirs(path: str, errors: list[ErrorRecord]) -> list[str]:
  try:
    with os.scandir(path) as it:
      return sorted(e.name for e in it if e.is_dir())
  except OSError as e:
    errors.append(ErrorRecord(None, path, f"unreadable folder: {e.strerror or e}"))
    return []


def _read_transcripts(path: str, prefix: str, errors: list[ErrorRecord]) -> dict[str, str]:
  texts: dict[str, str] = {}
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    errors.append(ErrorRecord(None, path, f"unreadable transcript file: {e}"))
    return texts
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    parts = line.split(maxsplit=1)
    utt_id = parts[0]
    where = f"{path}:{lineno}"
    if len(parts) < 2 or not parts[1].strip():
      errors.append(ErrorRecord(utt_id, where, "transcript line has an id but no text"))
    elif not utt_id.startswith(prefix):
      errors.append(ErrorRecord(utt_id, where, f"id does not start with {prefix!r}"))
    elif utt_id in texts:
      errors.append(ErrorRecord(utt_id, where, "duplicate id in transcript file (first kept)"))
    else:
      texts[utt_id] = " ".join(parts[1].split())
  return texts


def _scan_chapter(root: str, speaker: str, chapter: str, errors: list[ErrorRecord]
                  ) -> list[Utterance]:
  folder = os.path.join(root, speaker, chapter)
  prefix = f"{speaker}-{chapter}-"
  try:
    with os.scandir(folder) as it:
      names = sorted(e.name for e in it if e.is_file())
  except OSError as e:
    errors.append(ErrorRecord(None, folder, f"unreadable folder: {e.strerror or e}"))
    return []
  trans_name = f"{speaker}-{chapter}.trans.txt"
  texts = (_read_transcripts(os.path.join(folder, trans_name), prefix, errors)
           if trans_name in names else {})
  audio: dict[str, str] = {}
  for name in sorted(names, key=lambda n: AUDIO_EXTS.index(os.path.splitext(n)[1].lower())
                     if os.path.splitext(n)[1].lower() in AUDIO_EXTS else 99):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in AUDIO_EXTS:
      continue  # transcripts, READMEs, .DS_Store…
    path = os.path.join(folder, name)
    if not stem.startswith(prefix):
      errors.append(ErrorRecord(stem, path, f"file name does not start with {prefix!r}"))
    elif stem in audio:
      errors.append(ErrorRecord(stem, path, f"duplicate id: {os.path.basename(audio[stem])} kept"))
    else:
      audio[stem] = path
  if audio and trans_name not in names:
    errors.append(ErrorRecord(None, os.path.join(folder, trans_name), "transcript file missing"))
  utterances = []
  for utt_id in sorted(set(audio) | set(texts)):
    if utt_id not in texts:
      errors.append(ErrorRecord(utt_id, audio[utt_id], "audio has no transcript line"))
    elif utt_id not in audio:
      errors.append(ErrorRecord(utt_id, os.path.join(folder, trans_name),
                                f"transcript line has no audio file ({'/'.join(AUDIO_EXTS)})"))
    else:
      utterances.append(Utterance(utt_id, audio[utt_id], texts[utt_id], speaker))
  return utterances


def scan_librispeech(root: str | os.PathLike, strict: bool = False) -> Scan:
  """All utterances of one LibriSpeech-layout split folder, sorted by id, plus every problem found.

  `strict=True` raises `CorpusError` listing the problems instead of returning them.
  """
  root = os.fspath(root)
  if not os.path.exists(root):
    raise CorpusError(f"{root}: no such folder (expected a LibriSpeech-layout split folder)")
  if not os.path.isdir(root):
    raise CorpusError(f"{root}: not a folder (expected a LibriSpeech-layout split folder "
                      f"SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac)")
  errors: list[ErrorRecord] = []
  utterances: list[Utterance] = []
  speakers = _subdirs(root, errors)
  for speaker in speakers:
    for chapter in _subdirs(os.path.join(root, speaker), errors):
      utterances.extend(_scan_chapter(root, speaker, chapter, errors))
  seen: dict[str, str] = {}
  unique = []
  for u in utterances:  # the same id under two chapter folders
    if u.id in seen:
      errors.append(ErrorRecord(u.id, u.path, f"duplicate id: {seen[u.id]} kept"))
    else:
      seen[u.id] = u.path
      unique.append(u)
  if not unique and not errors:
    hint = ""
    splits = [s for s in speakers if not s.isdigit()]
    if splits:
      hint = (f"; it holds folders {splits[:8]}: pass one split folder, e.g. "
              f"{os.path.join(root, splits[0])}")
    raise CorpusError(f"{root}: no LibriSpeech utterances found (SPEAKER/CHAPTER/"
                      f"SPEAKER-CHAPTER-UTT.flac with SPEAKER-CHAPTER.trans.txt){hint}")
  if strict and errors:
    shown = "\n  ".join(f"{e.path}: {e.reason}" for e in errors[:20])
    more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise CorpusError(f"{root}: {len(errors)} problem(s):\n  {shown}{more}")
  return Scan(sorted(unique, key=lambda u: u.id), errors)


def split_folders(root: str | os.PathLike) -> dict[str, str]:
  """Split folders under a LibriSpeech root ("test-clean" → "test_clean", "train-clean-100" →
  "train_clean100", tfds' names), also looking inside a `LibriSpeech/` folder as the tarballs
  unpack."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise CorpusError(f"{root}: not a folder")
  nested = os.path.join(root, "LibriSpeech")
  base = nested if os.path.isdir(nested) else root
  out = {}
  for name in sorted(os.listdir(base)):
    path = os.path.join(base, name)
    if os.path.isdir(path) and not name.isdigit() and not name.startswith("."):
      out[split_name(name)] = path
  return out


def split_name(folder: str) -> str:
  # tfds' librispeech spells "train-clean-100" as "train_clean100": a hyphen before digits vanishes.
  out = []
  for i, ch in enumerate(folder):
    if ch in "-." and i + 1 < len(folder) and folder[i + 1].isdigit():
      continue
    out.append("_" if ch in "-. " else ch)
  return "".join(out)
