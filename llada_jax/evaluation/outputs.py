"""What an evaluation writes: OUT/hyps.jsonl and OUT/summary.json (atomically), its table, and
optionally the predictions file Diffusion-ASR's inference.py writes.

hyps.jsonl has one line per utterance, sorted by id: {id, ref, hyp, confidences, seconds} (plus
truncated_from_seconds for audio cut to the transcriber's window; ref null for audio files without
a transcript), or an error record {id, ref, hyp: null, error, path}.

The predictions file is their list, in data order: [{"path", "text", "llada_prediction"}, …] with
"origin_transcripts" added for deliberation, so their calc_wer_json.py reads our runs. Error records
are left out (their script has no such records: it stops at the first unreadable file).
"""

from __future__ import annotations

import json
import os
import typing as tp
from pathlib import Path

from llada_jax.data.librispeech import ErrorRecord


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


def error_record(e: ErrorRecord, refs: dict) -> dict:
  return {"id": e.id, "ref": refs.get(e.id) if e.id else None, "hyp": None, "error": e.reason,
          "path": e.path}


def jsonable(value):
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  return str(value)


def write(out: Path, records: list[dict], summary: dict) -> None:
  records.sort(key=lambda r: (r["id"] or "", r.get("path") or ""))
  write_atomic(out / "hyps.jsonl",
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
  write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def predictions(records: tp.Sequence[dict], order: tp.Sequence[tuple[str, str]] | None,
                first_pass: tp.Mapping[str, str] | None = None) -> list[dict]:
  """The transcribed records as their inference.py's list, in `order` ((id, audio path) pairs;
  None: by id, the id standing in for the path), with origin_transcripts when given a first pass."""
  done = {r["id"]: r for r in records if "error" not in r}
  if order is None:
    order = [(i, i) for i in sorted(done)]
  rows = []
  for utt_id, path in order:
    r = done.get(utt_id)
    if r is None:
      continue
    row = {"path": path, "text": r["ref"], "llada_prediction": r["hyp"]}
    if first_pass is not None:
      row["origin_transcripts"] = first_pass[utt_id]
    rows.append(row)
  return rows


def write_predictions(path: str | os.PathLike, rows: list[dict]) -> None:
  write_atomic(path, json.dumps(rows, indent=4))  # their json.dump(result, f, indent=4)


def format_table(summary: dict) -> str:
  wer = "—" if summary["wer"] is None else f"{100 * summary['wer']:.2f}"
  rtf = "—" if summary["rtf"] is None else f"{summary['rtf']:.4f}"
  head = ["strategy", "utts", "errors", "WER %", "RTF", "audio s", "decode s", "compile s"]
  row = [summary["strategy"], str(summary["num_utts"]), str(summary["num_errors"]), wer, rtf,
         f"{summary['audio_seconds']:.1f}", f"{summary['decode_seconds']:.2f}",
         f"{summary['compile_seconds']:.2f}"]
  widths = [max(len(h), len(r)) for h, r in zip(head, row)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
  return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])
