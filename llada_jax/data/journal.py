"""A JSONL file of finished records that a killed run resumes from.

Each record is one line, appended, flushed and fsynced before the next one is worked on, so a kill
loses at most the line being written. A line is whole only with its newline: on opening, a last line
without one (or one that does not parse) is the torn tail of a killed write; the file is rewritten
without it, atomically (temp file, fsync, rename), and its record done again. Any other line that is
not a JSON object means the file is not a journal: `JournalError`, nothing touched.
"""

from __future__ import annotations

import json
import os
import typing as tp
from pathlib import Path

from llada_jax.evaluation.outputs import write_atomic


class JournalError(ValueError):
  """The file exists but is not a journal (a line in the middle is not a JSON object)."""


def _parse(line: bytes) -> dict | None:
  try:
    row = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  return row if isinstance(row, dict) else None


class Journal:
  """`Journal(path)` reads what a previous run left (`records`, `torn`: whether a torn last line
  was dropped), or creates the file empty, and appends new records with `append`;
  `overwrite=True` starts empty."""

  def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
    self.path = Path(path)
    self.records: list[dict] = []
    self.torn = False
    self._file: tp.TextIO | None = None
    if self.path.exists() and not overwrite:
      self._read()
    else:
      write_atomic(self.path, "")

  def _read(self) -> None:
    lines = self.path.read_bytes().split(b"\n")
    # split leaves b"" after a final newline; anything else there is a line cut short
    tail, whole = lines[-1], lines[:-1]
    for n, line in enumerate(whole, 1):
      if not line.strip():
        continue
      row = _parse(line)
      if row is None:
        if n == len(whole) and not tail:  # the last line: torn within its own bytes
          self.torn = True
          continue
        raise JournalError(f"{self.path}:{n}: not a JSON object: {line[:80]!r}")
      self.records.append(row)
    self.torn = self.torn or bool(tail.strip())
    if self.torn:
      self.rewrite(self.records)

  def rewrite(self, records: tp.Sequence[dict]) -> None:
    """Replace the file's records with `records`, atomically."""
    if self._file is not None:
      raise RuntimeError("rewrite() after append(): close the journal first")
    self.records = list(records)
    write_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

  def append(self, record: dict) -> None:
    """One record on disk (written, flushed, fsynced) before this returns."""
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    self.records.append(record)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> Journal:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
