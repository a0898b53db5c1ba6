"""A transcript in the OpenAI audio API's response formats: json, text, verbose_json, srt, vtt.

verbose_json, srt and vtt carry segments: the windows of long audio, timed from the middle of one
window's overlap with the previous to the middle of its overlap with the next (one segment for
audio that fits a window). verbose_json adds, for a cascade, the first pass's text
(`first_pass`), which the server's page sets beside the deliberated one.
"""

from __future__ import annotations

import typing as tp

from llada_jax.inference.cascade import FileResult

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MEDIA = {"json": "application/json", "verbose_json": "application/json",
         "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
         "vtt": "text/vtt; charset=utf-8"}


def _clock(seconds: float, sep: str) -> str:
  ms = int(round(seconds * 1000))
  h, ms = divmod(ms, 3_600_000)
  m, ms = divmod(ms, 60_000)
  s, ms = divmod(ms, 1000)
  return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(r: FileResult) -> str:
  return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                 for i, s in enumerate(r.segments, 1))


def vtt(r: FileResult) -> str:
  return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n"
                                for s in r.segments)


def verbose(r: FileResult, model: str, language: str | None) -> dict[str, tp.Any]:
  out: dict[str, tp.Any] = {
      "task": "transcribe", "language": language, "duration": round(r.seconds, 3),
      "text": r.text, "model": model,
      "segments": [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text,
                    "tokens": [], "temperature": 0.0} for i, s in enumerate(r.segments)]}
  if r.first_pass is not None:
    out["first_pass"] = r.first_pass
  return out


def render(r: FileResult, fmt: str, model: str, language: str | None) -> str | dict:
  """The body for `fmt` (FORMATS): a dict for the JSON formats, text for the others."""
  if fmt == "json":
    return {"text": r.text}
  if fmt == "verbose_json":
    return verbose(r, model, language)
  if fmt == "srt":
    return srt(r)
  if fmt == "vtt":
    return vtt(r)
  return (r.text or "") + "\n"
