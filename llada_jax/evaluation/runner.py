"""An evaluation run: data → fixed-shape batches → a Transcriber → records → summary.

RTF = decode seconds (the transcriber's own time on compiled shapes, features included, compile
excluded: every transcriber compiles ahead of time and counts it in `compile_seconds`) / seconds of
audio transcribed. Outputs: see `outputs`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as tp
from pathlib import Path

import numpy as np

from llada_jax import text
from llada_jax.audio import SAMPLE_RATE, AudioError
from llada_jax.data import pipeline
from llada_jax.evaluation import outputs
from llada_jax.evaluation.inputs import EvalError, open_data, read_first_pass
from llada_jax.inference.transcriber import Transcriber, UtteranceError, batch_buckets

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSettings:
  data: str  # LibriSpeech-layout split folder, or tfds:NAME/SPLIT
  out: str  # output folder (hyps.jsonl, summary.json)
  limit: int | None = None  # first N utterances (by id) only
  strict: bool = False  # stop at the first bad file or utterance
  tfds_data_dir: str | None = None  # where tfds:NAME/SPLIT was prepared
  first_pass: str | None = None  # deliberation: hyps.jsonl of the first-pass run
  quiet: bool = False  # no progress bar


def run(transcriber: Transcriber, settings: RunSettings, *, checkpoint: str = "",
        started: float | None = None, extra: dict | None = None) -> dict:
  """Transcribe and score; writes OUT/hyps.jsonl and OUT/summary.json and returns the summary.
  `started`: perf_counter() when the run began (model loading included in wall_seconds)."""
  from tqdm import tqdm

  start = time.perf_counter() if started is None else started
  s = settings
  first_pass = read_first_pass(s.first_pass) if s.first_pass else None
  data, refs = open_data(s.data, data_dir=s.tfds_data_dir, limit=s.limit, strict=s.strict,
                         max_seconds=transcriber.max_seconds)
  out = Path(s.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise EvalError(f"--out {out}: {e}") from e

  records = [outputs.error_record(e, refs) for e in data.errors]
  decode_s = compile_s = audio_seconds = 0.0
  if len(data):
    config = pipeline.PipelineConfig(
        batch_size=transcriber.batch_size, buckets=batch_buckets(transcriber.buckets,
                                                                 data.lengths()),
        shuffle=False, num_epochs=1, too_long="trim", num_threads=2, prefetch=2)
    batches = pipeline.AudioBatches(data, config, process_index=0, process_count=1)
    bar = tqdm(total=len(data), unit="utt", desc=transcriber.name, disable=s.quiet or None)
    for batch in batches:
      for e in batch["errors"]:
        if s.strict:
          raise EvalError(f"--strict: {e.path}: {e.reason}")
        records.append(outputs.error_record(e, refs))
      if first_pass is not None:
        _attach_first_pass(batch, first_pass, s, records)
      valid = np.flatnonzero(batch["valid"])
      if valid.shape[0]:
        before, t0 = transcriber.compile_seconds, time.perf_counter()
        try:
          results = transcriber.transcribe(batch)
        except (UtteranceError, AudioError) as e:
          if s.strict:
            raise EvalError(f"--strict: {batch['ids'][valid[0]]}…: {e}") from e
          results = [e] * len(batch["valid"])
        compiled = transcriber.compile_seconds - before
        decode_s += time.perf_counter() - t0 - compiled
        compile_s += compiled
        if len(results) != len(batch["valid"]):
          raise RuntimeError(f"{transcriber.name}.transcribe returned {len(results)} results for "
                             f"a batch of {len(batch['valid'])}")
        for r in valid:
          utt_id, result = batch["ids"][r], results[r]
          seconds = float(batch["audio_len"][r]) / SAMPLE_RATE
          if isinstance(result, Exception):
            if s.strict:
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

  done = [r for r in records if "error" not in r]
  summary = {
      "strategy": transcriber.name,
      "checkpoint": str(checkpoint),
      "data": str(s.data),
      "wer": text.wer([r["ref"] for r in done], [r["hyp"] for r in done]) if done else None,
      "rtf": decode_s / audio_seconds if audio_seconds else None,
      "num_utts": len(done),
      "num_errors": len(records) - len(done),
      "audio_seconds": round(audio_seconds, 3),
      "decode_seconds": round(decode_s, 4),
      "compile_seconds": round(compile_s, 4),
      "wall_seconds": round(time.perf_counter() - start, 4),
      "compiled_shapes": list(transcriber.compiled_shapes),
      "strategy_info": outputs.jsonable(transcriber.info),
      **outputs.jsonable(extra or {}),
  }
  outputs.write(out, records, summary)
  return summary


def _attach_first_pass(batch: dict, first_pass: tp.Mapping[str, str | None], s: RunSettings,
                       records: list[dict]) -> None:
  """Hand each row its first-pass hypothesis; a row without one is an error record, not decoded."""
  batch["hypothesis"] = [first_pass.get(i) for i in batch["ids"]]
  batch["valid"] = np.asarray(batch["valid"]).copy()
  for r in np.flatnonzero(batch["valid"]):
    if batch["hypothesis"][r] is None:
      error = UtteranceError(f"{batch['ids'][r]}: no first-pass hypothesis in {s.first_pass}")
      if s.strict:
        raise EvalError(f"--strict: {batch['ids'][r]}: {error}")
      batch["valid"][r] = False
      records.append({"id": batch["ids"][r], "ref": batch["text"][r], "hyp": None,
                      "error": f"{type(error).__name__}: {error}", "path": None})
