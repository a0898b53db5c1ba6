"""An evaluation run: data → fixed-shape batches → a Transcriber → records → summary.

RTF = decode seconds (the transcriber's own time on compiled shapes, features included, compile
excluded: every transcriber compiles ahead of time and counts it in `compile_seconds`; the first run
of each compiled shape, slower on XLA's CPU backend, is decode time) / seconds of audio transcribed
(after any cut to the transcriber's window). WER: `wer` (the authors' scoring), over the utterances
with a reference (audio files without one have ref null; none at all: WER null).
Outputs: see `outputs`.

Several processes (`parallel.distributed`) run the same loop in step: the pipeline plans global
batches and hands each process its own rows of each (`transcriber.local_batch_size`), so every
process runs the same number of steps, and a step whose rows are all padding on one process is
still run there while another has work. At the end every process's records and timings are
gathered; process 0 writes the outputs (one hyps.jsonl, as a single process would write it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import numpy as np

from llada_jax.data import pipeline
from llada_jax.data.audio import SAMPLE_RATE, AudioError
from llada_jax.evaluation import inputs, outputs, wer
from llada_jax.evaluation.inputs import EvalError, open_data
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import UtteranceError
from llada_jax.inference.transcriber import Transcriber
from llada_jax.parallel import distributed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSettings:
  data: str  # a data spec of `pipeline.open_source`: LibriSpeech folder, JSON data file, tfds:…,
  # or audio files (a folder of them, a glob, a .txt/.jsonl list)
  out: str  # output folder (hyps.jsonl, summary.json)
  limit: int | None = None  # first N utterances (by id; a JSON data file: in its order) only
  strict: bool = False  # stop at the first bad file or utterance
  tfds_data_dir: str | None = None  # where tfds:NAME/SPLIT was prepared
  # deliberation: hyps.jsonl of the first-pass run; None: a JSON data file's origin_transcripts
  first_pass: str | None = None
  quiet: bool = False  # no progress bar
  predictions_json: str | None = None  # also write the authors' predictions list (`outputs`)


def run(transcriber: Transcriber, settings: RunSettings, *, checkpoint: str = "",
        started: float | None = None, extra: dict | None = None) -> dict:
  """Transcribe and score; writes OUT/hyps.jsonl and OUT/summary.json and returns the summary.
  `started`: perf_counter() when the run began (model loading included in wall_seconds)."""
  from tqdm import tqdm

  start = time.perf_counter() if started is None else started
  s = settings
  if s.predictions_json and not Path(s.predictions_json).parent.is_dir():
    raise EvalError(f"predictions_json {s.predictions_json}: no such folder "
                    f"{Path(s.predictions_json).parent}")
  # Audio over the transcriber's window: cut to it by the pipeline (too_long="trim", the authors'
  # rule), or refused here as an error record (too_long="error").
  refuse = transcriber.max_seconds if transcriber.too_long == "error" else None
  data, refs = open_data(s.data, data_dir=s.tfds_data_dir, limit=s.limit, strict=s.strict,
                         max_seconds=refuse)
  # A LLaDA transcriber is named for its strategy: deliberation reads a first pass, from
  # --first-pass or else a JSON data file's origin_transcripts.
  first_pass = (inputs.first_pass(s.first_pass, data, s.data)
                if s.first_pass or transcriber.name == "deliberation" else None)
  out = Path(s.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise EvalError(f"out {out}: {e}") from e

  process, processes = jax.process_index(), jax.process_count()
  if processes > 1 and transcriber.placement is None:
    raise EvalError(f"{transcriber.name}: a transcriber without a placement runs in one process "
                    f"(this is one of {processes})")
  # every process opened the whole data spec: its unreadable entries are recorded once
  records = [outputs.error_record(e, refs) for e in data.errors] if process == 0 else []
  decode_s = compile_s = audio_seconds = 0.0
  window, truncated = transcriber.window_samples, 0
  if len(data):
    full_lengths = data.lengths()
    config = pipeline.PipelineConfig(
        batch_size=transcriber.local_batch_size,
        buckets=transcriber.pipeline_buckets(full_lengths), shuffle=False, num_epochs=1,
        too_long="trim", num_threads=2, prefetch=2)
    batches = pipeline.AudioBatches(data, config, process_index=process, process_count=processes)
    bar = tqdm(total=len(data), unit="utt", desc=transcriber.name,
               disable=s.quiet or process != 0 or None)
    for batch in batches:
      for e in batch["errors"]:
        if s.strict:
          raise EvalError(f"strict: {e.path}: {e.reason}")
        records.append(outputs.error_record(e, refs))
      hypothesis = (None if first_pass is None else
                    _attach_first_pass(batch, first_pass, s, records))
      valid = np.flatnonzero(batch["valid"])
      # the global count decides: a compiled step runs on every process or on none
      step_rows = (valid.shape[0] if processes == 1 else
                   sum(distributed.allgather(int(valid.shape[0]))))
      if step_rows:
        before, t0 = transcriber.compile_seconds, time.perf_counter()
        try:
          results = transcriber.transcribe(AudioBatch.from_pipeline(batch, hypothesis))
        except (UtteranceError, AudioError) as e:
          if s.strict:
            first = batch["ids"][valid[0]] if valid.shape[0] else "a batch"
            raise EvalError(f"strict: {first}…: {e}") from e
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
              raise EvalError(f"strict: {utt_id}: {result}") from result
            records.append({"id": utt_id, "ref": batch["text"][r], "hyp": None,
                            "error": f"{type(result).__name__}: {result}", "path": None})
            continue
          hyp, conf = result
          audio_seconds += seconds
          records.append({"id": utt_id, "ref": batch["text"][r], "hyp": hyp,
                          "confidences": None if conf is None else [float(c) for c in conf],
                          "seconds": round(seconds, 4)})
          full = int(full_lengths[batch["index"][r]])
          if window is not None and full > window:  # transcribed from its first `window` samples
            truncated += 1
            records[-1]["truncated_from_seconds"] = round(full / SAMPLE_RATE, 4)
      bar.update((int(batch["valid"].sum()) + len(batch["errors"])) * processes)
    bar.close()

  if processes > 1:  # every process's records and timings, in process order
    parts = distributed.allgather({"records": records, "audio": audio_seconds,
                                   "decode": decode_s, "compile": compile_s,
                                   "truncated": truncated})
    records = [r for part in parts for r in part["records"]]
    audio_seconds = sum(part["audio"] for part in parts)
    truncated = sum(part["truncated"] for part in parts)
    # the processes run in step: the slowest one's time is the run's
    decode_s = max(part["decode"] for part in parts)
    compile_s = max(part["compile"] for part in parts)

  done = [r for r in records if "error" not in r]
  scored = [r for r in done if r["ref"] is not None]
  score = (wer.corpus_wer([r["ref"] for r in scored], [r["hyp"] for r in scored]).summary()
           if scored else dict.fromkeys(("wer", "ins", "del", "sub", "ref_words")))
  summary = {
      "strategy": transcriber.name,
      "checkpoint": str(checkpoint),
      "data": str(s.data),
      **score,
      "rtf": decode_s / audio_seconds if audio_seconds else None,
      "num_utts": len(done),
      "num_errors": len(records) - len(done),
      "num_unreferenced": len(done) - len(scored),  # transcribed, no reference: not in the WER
      # utterances longer than the transcriber's window, transcribed from its first max_seconds
      "truncated_utts": truncated,
      "max_seconds": transcriber.max_seconds,
      "too_long": transcriber.too_long if window is not None else None,
      "audio_seconds": round(audio_seconds, 3),
      "decode_seconds": round(decode_s, 4),
      "compile_seconds": round(compile_s, 4),
      "wall_seconds": round(time.perf_counter() - start, 4),
      "compiled_shapes": list(transcriber.compiled_shapes),
      "strategy_info": outputs.jsonable(transcriber.info),
      # mesh, rules, devices, processes, batch_size (global rows per step), per_device_batch,
      # dtype, lora
      "placement": outputs.jsonable(transcriber.placement_info),
      **outputs.jsonable(extra or {}),
  }
  if first_pass is not None:
    summary["first_pass"] = first_pass.origin
  if process != 0:
    return summary
  outputs.write(out, records, summary)
  if s.predictions_json:
    outputs.write_predictions(s.predictions_json, outputs.predictions(
        records, _data_order(data), None if first_pass is None else first_pass.texts))
  return summary


def _data_order(data) -> list[tuple[str, str]] | None:
  """(id, audio path) in the data's order: a folder's sorted ids, a JSON data file's entries; None
  for a tfds split, which keeps no paths (`outputs.predictions` sorts by id; ids stand in)."""
  utterances = getattr(data, "utterances", None)
  return None if utterances is None else [(u.id, u.path) for u in utterances]


def _attach_first_pass(batch: dict, first_pass: inputs.FirstPass, s: RunSettings,
                       records: list[dict]) -> list[str | None]:
  """Each row's first-pass hypothesis; a row without one is an error record, not decoded (its
  `valid` turned False in the pipeline batch)."""
  hypothesis = [first_pass.texts.get(i) for i in batch["ids"]]
  batch["valid"] = np.asarray(batch["valid"]).copy()
  for r in np.flatnonzero(batch["valid"]):
    if hypothesis[r] is None:
      error = UtteranceError(first_pass.missing(batch["ids"][r]))
      if s.strict:
        raise EvalError(f"strict: {batch['ids'][r]}: {error}")
      batch["valid"][r] = False
      records.append({"id": batch["ids"][r], "ref": batch["text"][r], "hyp": None,
                      "error": f"{type(error).__name__}: {error}", "path": None})
  return hypothesis
