"""eval.py's command line: arguments → typed settings → `runner.run`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import typing as tp
from pathlib import Path

import jax

from llada_jax import decoding
from llada_jax.data import manifest
from llada_jax.evaluation import outputs, runner
from llada_jax.evaluation.inputs import EvalError
from llada_jax.inference.errors import ModelError
from llada_jax.inference.llada import STRATEGIES as LLADA_STRATEGIES
from llada_jax.inference.llada import LLaDASettings
from llada_jax.inference.transcriber import TOO_LONG
from llada_jax.inference.whisper import WhisperSettings
from llada_jax.models import text
from llada_jax.models.config import ATTENTION
from llada_jax.parallel import compile_cache, distributed, placement, sharding

STRATEGIES = ("whisper", *LLADA_STRATEGIES)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description or __doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="converted checkpoint folder")
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
  p.add_argument("--no-compile-cache", action="store_true",
                 help="no persistent compilation cache (llada_jax.parallel.compile_cache)")

  g = p.add_argument_group("devices")
  g.add_argument("--mesh", type=mesh_arg, default=None, metavar="DATA,FSDP,TENSOR",
                 help="device mesh, one size may be -1 (all remaining devices); batches are split "
                      "over data × fsdp, weights placed by --sharding (default: 1,1,1 in one "
                      "process; -1,1,1 with several)")
  g.add_argument("--sharding", choices=sharding.PRESET_NAMES, default="full_fsdp",
                 help="weight placement, a training preset: full_fsdp (model dim over fsdp; heads, "
                      "MLP and vocabulary over tensor), lora_dp (whole on every data-parallel "
                      "device, split over tensor only: no weight gathers) or replicated")
  g.add_argument("--dtype", choices=placement.DTYPES, default="auto",
                 help="compute dtype of the model (weights keep theirs); auto: bfloat16 on "
                      "GPU/TPU, the checkpoint's own (float32) on CPU")
  g.add_argument("--attention", choices=ATTENTION, default=None,
                 help="attention kernel: xla (einsums), dot_product "
                      "(jax.nn.dot_product_attention), cudnn (flash attention; GPU, bf16/fp16), "
                      "splash (TPU), auto (cudnn on GPU at half precision, splash on TPU, else "
                      "xla); default: the checkpoint's (xla)")
  g.add_argument("--no-merge-lora", action="store_true",
                 help="decode with the LoRA adapters as trained instead of folding them into "
                      "the weights once at load (the same up to float rounding)")

  w, d = WhisperSettings(), LLaDASettings()
  g = p.add_argument_group("strategy whisper")
  g.add_argument("--bucketed", action="store_true",
                 help="length buckets with shorter encoder input (faster on a CPU, less accurate "
                      "on short audio); default: every utterance padded to 30 s (3000 mel "
                      "frames), as Whisper was trained")
  g.add_argument("--bucket-seconds", type=float, nargs="+", default=list(w.bucket_seconds),
                 help="with --bucketed: bucket lengths in seconds (30 is always added)")
  g.add_argument("--no-suppress", action="store_true",
                 help="do not suppress Whisper's non-speech tokens (suppress_tokens)")
  g.add_argument("--chunk-stride", type=float, default=w.chunk_stride,
                 help="> 30 s audio: seconds of overlap on each side of a 30 s window")
  g.add_argument("--language", default=w.language, help="multilingual models: the language token")
  g.add_argument("--encoder-rows", type=int, default=w.encoder_rows,
                 help="encode this many utterances at a time per data-parallel shard (default: "
                      "1 on CPU, where the "
                      "memory-bound attention over 1500 frames is ~2× faster row by row; the "
                      "whole batch on accelerators)")
  g.add_argument("--max-new-tokens", type=int, default=w.max_new_tokens,
                 help="decoding length cap (default: half the decoder context)")

  g = p.add_argument_group("strategies ar / diffusion / semi_ar / deliberation")
  g.add_argument("--steps", type=int, default=d.steps,
                 help="denoising steps (default: = gen length, the paper's 128/128 setting)")
  g.add_argument("--gen-length", type=int, default=d.gen_length,
                 help="response length (default: the run's response_len, else 128)")
  g.add_argument("--block-length", type=int, default=d.block_length, help="semi_ar block length")
  g.add_argument("--remasking", default=d.remasking, choices=decoding.REMASKING)
  g.add_argument("--temperature", type=float, default=d.temperature)
  g.add_argument("--threshold", type=float, default=d.threshold,
                 help="Fast-dLLM parallel decoding: also commit every token with confidence ≥ τ")
  g.add_argument("--cache", action="store_true", help="Fast-dLLM prefix KV cache per block")
  g.add_argument("--dual-cache", action="store_true",
                 help="Fast-dLLM dual cache (implies --cache): each cached step runs the block "
                      "alone (semi_ar); deliberation's sub-blocks differ per row: prefix cache "
                      "there")
  g.add_argument("--adaptive-length", action="store_true",
                 help="gen length per batch from its longest utterance, bucketed (32/64/96/128)")
  g.add_argument("--mel-frames", type=int, default=d.mel_frames,
                 help="encoder input frames (default: the run's mel_frames, else 3000 = 30 s)")
  g.add_argument("--too-long", choices=TOO_LONG, default=None,
                 help=f"audio longer than --mel-frames / 100 s: trim = cut to it, as the authors' "
                      f"inference.py cuts every utterance to 30 s (counted in summary.json's "
                      f"truncated_utts); error = an error record (default: {d.too_long})")
  g.add_argument("--first-pass",
                 help="deliberation: hyps.jsonl of the first-pass run (default with a JSON data "
                      "file: its entries' origin_transcripts)")
  g.add_argument("--masking", default=d.masking, choices=decoding.MASKING)
  g.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
  g.add_argument("--deliberation-strategy", default=d.deliberation_strategy,
                 choices=decoding.STRATEGIES)
  g.add_argument("--num-chunks", type=int, default=d.num_chunks)
  g.add_argument("--text-only", action="store_true",
                 help="deliberation without audio embeddings (the paper's ablation)")
  g.add_argument("--hypothesis-tokens", type=int, default=d.hypothesis_tokens,
                 help="deliberation: cut first-pass hypotheses to N tokens (default: whole, as "
                      "Diffusion-ASR)")
  g.add_argument("--text-form", default=d.text_form, choices=text.TEXT_FORMS,
                 help="deliberation: the form hypotheses are given to the LM in (default: the "
                      "model's training form, from its source.json)")
  g.add_argument("--seed", type=int, default=d.seed,
                 help="key for random masking / remasking")
  return p


def parse_args(argv: tp.Sequence[str] | None = None, description: str | None = None
               ) -> argparse.Namespace:
  parser = build_parser(description)
  args = parser.parse_args(argv)
  if args.limit is not None and args.limit < 1:
    parser.error("--limit must be ≥ 1")
  if args.batch_size is not None and args.per_device_batch is not None:
    parser.error("give --batch-size or --per-device-batch, not both")
  if args.per_device_batch is None and args.batch_size is None:
    args.batch_size = 16
  if (args.batch_size or 1) < 1 or (args.per_device_batch or 1) < 1:
    parser.error("--batch-size and --per-device-batch must be ≥ 1")
  if args.strategy == "deliberation" and not args.first_pass and not manifest.is_manifest(
      args.data):
    parser.exit(2, "error: --strategy deliberation needs --first-pass HYPS.jsonl (another "
                   "run's output), or --data FILE.json with origin_transcripts\n")
  if args.strategy == "whisper" and args.too_long is not None:
    parser.error("--too-long is for the Whisper-LLaDA strategies: --strategy whisper transcribes "
                 "longer audio in overlapping 30 s windows")
  return args


def settings(args: argparse.Namespace) -> tuple[WhisperSettings | LLaDASettings,
                                                  runner.RunSettings]:
  """The typed settings of parsed arguments: the transcriber's and the run's."""
  run = runner.RunSettings(data=args.data, out=args.out, limit=args.limit, strict=args.strict,
                           tfds_data_dir=args.tfds_data_dir, quiet=args.quiet,
                           first_pass=args.first_pass if args.strategy == "deliberation" else None,
                           predictions_json=args.predictions_json)
  if args.strategy == "whisper":
    return WhisperSettings(bucketed=args.bucketed, bucket_seconds=tuple(args.bucket_seconds),
                           suppress=not args.no_suppress, chunk_stride=args.chunk_stride,
                           language=args.language, encoder_rows=args.encoder_rows,
                           max_new_tokens=args.max_new_tokens), run
  return LLaDASettings(
      strategy=args.strategy, gen_length=args.gen_length, steps=args.steps,
      block_length=args.block_length, remasking=args.remasking, temperature=args.temperature,
      threshold=args.threshold, cache=args.cache, dual_cache=args.dual_cache,
      adaptive_length=args.adaptive_length, mel_frames=args.mel_frames, seed=args.seed,
      masking=args.masking, mask_ratio=args.mask_ratio,
      deliberation_strategy=args.deliberation_strategy, num_chunks=args.num_chunks,
      text_only=args.text_only, too_long=args.too_long or LLaDASettings.too_long,
      hypothesis_tokens=args.hypothesis_tokens, text_form=args.text_form), run


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
                               merge_lora=not args.no_merge_lora)
  return runner.run(transcriber, run, checkpoint=args.checkpoint, started=start,
                    extra={"args": vars(args)})


def mesh_arg(value: str) -> tuple[int, int, int]:
  try:
    shape = tuple(int(v) for v in value.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3 or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
    raise argparse.ArgumentTypeError(f"{value!r}: expected DATA,FSDP,TENSOR, positive sizes, at "
                                     f"most one of them -1 (e.g. 8,1,1 or -1,1,2)")
  return tp.cast(tuple[int, int, int], shape)


def main(argv: tp.Sequence[str] | None = None, description: str | None = None) -> int:
  args = parse_args(argv, description)
  # One process of several (JAX_COORDINATOR_ADDRESS …): join the others before any device use.
  try:
    distributed.initialize_from_env()
  except distributed.DistributedError as e:
    print(f"eval.py: {e}", file=sys.stderr)
    return 2
  compile_cache.enable(disable=args.no_compile_cache)
  # Our own handler: absl (imported by tfds/orbax) may already own the root logger, which would
  # swallow the compile notices (whisper-jax's users took silent compiles for slowness).
  ours = logging.getLogger("llada_jax")
  if not any(getattr(h, "_llada_eval", False) for h in ours.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._llada_eval = True
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
  try:
    summary = evaluate(args)
  except (EvalError, ModelError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if jax.process_index() != 0:  # process 0 writes and reports
    return 0
  print(outputs.format_table(summary))
  also = f" and {args.predictions_json}" if args.predictions_json else ""
  print(f"wrote {Path(args.out) / 'hyps.jsonl'}, {Path(args.out) / 'summary.json'}{also}")
  return 0
