"""Transcribe a data set and score it: WER as the authors score it, real-time factor.

  llada-jax eval --checkpoint runs/paper/model --data LibriSpeech/test-other --out runs/semi \
      --strategy semi_ar --block-length 32

Strategies: whisper (a converted Whisper), ar (a Whisper-LLaMA), diffusion and semi_ar (a
Whisper-LLaDA), deliberation (a Whisper-LLaDA re-filling --first-pass hypotheses). Writes
OUT/hyps.jsonl and OUT/summary.json. Data specs, outputs, devices, several processes and long
audio: docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import typing as tp
from pathlib import Path

import jax

from llada_jax.cli import options
from llada_jax.data import manifest
from llada_jax.evaluation import outputs, runner
from llada_jax.evaluation.inputs import EvalError
from llada_jax.inference.errors import ModelError
from llada_jax.inference.llada import STRATEGIES as LLADA_STRATEGIES
from llada_jax.inference.llada import LLaDASettings
from llada_jax.inference.transcriber import TOO_LONG
from llada_jax.inference.whisper import WhisperSettings
from llada_jax.parallel import compile_cache, distributed, placement

NAME = "eval"
HELP = "transcribe a data set and score it (WER, RTF)"
STRATEGIES = ("whisper", *LLADA_STRATEGIES)


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", required=True,
                 help="converted checkpoint folder, or a Hub id of a Whisper (ORG/NAME[@REVISION], "
                      "e.g. openai/whisper-large-v3; converted once into "
                      "~/.cache/llada_jax/converted)")
  p.add_argument("--data", required=True,
                 help="tfds:NAME/SPLIT; a Diffusion-ASR JSON data file (FILE.json: "
                      "{\"annotation\": [{\"path\", \"text\"}, …]}); a list of audio paths "
                      "(LIST.txt: one per line; LIST.jsonl: {\"path\", \"text\"?} per line); a "
                      "glob pattern (quoted: 'clips/**/*.mp3'); or a folder: LibriSpeech layout if "
                      "a *.trans.txt lies below it, else every audio file below it (wav, flac, "
                      "ogg, mp3, m4a, …; ids = paths relative to it). Audio without a transcript "
                      "has ref null and is left out of the WER")
  p.add_argument("--out", required=True, help="output folder (hyps.jsonl, summary.json)")
  p.add_argument("--strategy", required=True, choices=STRATEGIES)
  p.add_argument("--batch-size", type=int, default=None,
                 help="rows per step over the whole mesh and every process (default 16)")
  p.add_argument("--per-device-batch", type=int, default=None, metavar="N",
                 help="instead of --batch-size: N rows per data-parallel shard, i.e. a batch of "
                      "N × data × fsdp (throughput scales with the mesh)")
  p.add_argument("--limit", type=int, default=None,
                 help="first N utterances only (by id; a JSON data file: in its order)")
  p.add_argument("--predictions-json", default=None, metavar="FILE",
                 help="also write Diffusion-ASR's predictions list [{path, text, "
                      "llada_prediction(, origin_transcripts)}] in data order, for their "
                      "calc_wer_json.py; error records are left out")
  p.add_argument("--strict", action="store_true", help="stop at the first bad file or utterance")
  p.add_argument("--tfds-data-dir", default=None, help="where tfds:NAME/SPLIT was prepared")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--too-long", choices=TOO_LONG, default=None,
                 help=f"Whisper-LLaDA strategies, audio longer than --mel-frames / 100 s: trim = "
                      f"cut to it, as the authors' inference.py cuts every utterance to 30 s "
                      f"(counted in summary.json's truncated_utts); error = an error record "
                      f"(default: {LLaDASettings.too_long})")
  p.add_argument("--first-pass",
                 help="deliberation: hyps.jsonl of the first-pass run (default with a JSON data "
                      "file: its entries' origin_transcripts)")
  options.add_compile_cache(p)
  options.add_devices(p)
  options.add_decoding(p, llada_title="strategies ar / diffusion / semi_ar / deliberation",
                       deliberation_title="strategy deliberation")


def check(args: argparse.Namespace) -> None:
  """Arguments that cannot work together: a UsageError."""
  if args.limit is not None and args.limit < 1:
    raise options.UsageError(f"--limit {args.limit}: expected ≥ 1")
  if args.batch_size is not None and args.per_device_batch is not None:
    raise options.UsageError("give --batch-size or --per-device-batch, not both")
  if args.per_device_batch is None and args.batch_size is None:
    args.batch_size = 16
  if (args.batch_size or 1) < 1 or (args.per_device_batch or 1) < 1:
    raise options.UsageError("--batch-size and --per-device-batch must be ≥ 1")
  if args.strategy == "deliberation" and not args.first_pass and not manifest.is_manifest(
      args.data):
    raise options.UsageError("--strategy deliberation needs --first-pass HYPS.jsonl (another "
                             "run's output), or --data FILE.json with origin_transcripts")
  if args.strategy == "whisper" and args.too_long is not None:
    raise options.UsageError("--too-long is for the Whisper-LLaDA strategies: --strategy whisper "
                             "transcribes longer audio in overlapping 30 s windows")
  whisper_only = options.given(args, options.WHISPER_OPTIONS)
  llada_only = options.given(args, options.LLADA_OPTIONS + options.DELIBERATION_OPTIONS)
  # --chunk-stride and --max-new-tokens are Whisper's, the rest of each group its strategies'
  if args.strategy != "whisper" and whisper_only:
    raise options.UsageError(f"{', '.join(whisper_only)}: for --strategy whisper")
  if args.strategy == "whisper" and llada_only:
    raise options.UsageError(f"{', '.join(llada_only)}: for the Whisper-LLaDA / -LLaMA "
                             f"strategies, not --strategy whisper")


def parse_args(argv: tp.Sequence[str]) -> argparse.Namespace:
  """`llada-jax eval`'s arguments, checked (argparse's exit 2 on a usage error)."""
  parser = options.command(sys.modules[__name__], argparse.ArgumentParser(prog="llada-jax eval"))
  args = parser.parse_args(argv)
  try:
    check(args)
  except options.UsageError as e:
    parser.error(str(e))
  return args


def settings(args: argparse.Namespace) -> tuple[WhisperSettings | LLaDASettings,
                                                  runner.RunSettings]:
  """The typed settings of parsed arguments: the transcriber's and the run's."""
  run = runner.RunSettings(data=args.data, out=args.out, limit=args.limit, strict=args.strict,
                           tfds_data_dir=args.tfds_data_dir, quiet=args.quiet,
                           first_pass=args.first_pass if args.strategy == "deliberation" else None,
                           predictions_json=args.predictions_json)
  if args.strategy == "whisper":
    return options.whisper_settings(args), run
  return options.llada_settings(args, args.strategy, too_long=args.too_long), run


def evaluate(args: argparse.Namespace) -> dict:
  """Open the checkpoint's transcriber and run; the summary (EvalError / ModelError on bad
  input)."""
  from llada_jax import inference

  start = time.perf_counter()
  model_settings, run = settings(args)
  try:  # before the checkpoint is read: a mesh or batch that cannot work is exit 2 at once
    devices = placement.Placement.create(args.mesh, args.sharding)
    batch_size = devices.global_batch(args.batch_size, args.per_device_batch)
  except placement.PlacementError as e:
    raise EvalError(str(e)) from None
  transcriber = inference.open(args.checkpoint, model_settings, batch_size=batch_size,
                               mesh=devices, dtype=args.dtype, attention=args.attention,
                               merge_lora=not args.no_merge_lora,
                               quantize=args.quantize)
  return runner.run(transcriber, run, checkpoint=args.checkpoint, started=start,
                    extra={"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}})


def run(args: argparse.Namespace) -> int:
  check(args)
  # One process of several (JAX_COORDINATOR_ADDRESS …): join the others before any device use.
  try:
    distributed.initialize_from_env()
  except distributed.DistributedError as e:
    raise options.UsageError(str(e)) from e
  compile_cache.enable(disable=args.no_compile_cache)
  args.checkpoint = options.checkpoint(args.checkpoint, f"--checkpoint {args.checkpoint}")
  try:
    summary = evaluate(args)
  except (EvalError, ModelError) as e:
    raise options.UsageError(str(e)) from e
  if jax.process_index() != 0:  # process 0 writes and reports
    return 0
  print(outputs.format_table(summary))
  also = f" and {args.predictions_json}" if args.predictions_json else ""
  print(f"wrote {Path(args.out) / 'hyps.jsonl'}, {Path(args.out) / 'summary.json'}{also}")
  return 0


def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax eval ARGS` (eval.py)."""
  return options.main(sys.modules[__name__], argv)
