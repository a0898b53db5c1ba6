"""Options shared by the subcommands: devices, logging, the compilation cache, and the decoding
options of eval and transcribe (declared once here, so every decoding option exists in both with
the same name and meaning) with the typed settings they build."""

from __future__ import annotations

import argparse
import logging
import sys
import typing as tp

from llada_jax import decoding
from llada_jax.inference.llada import LLaDASettings
from llada_jax.inference.whisper import WhisperSettings
from llada_jax.models import checkpoint as ckpt
from llada_jax.models import text
from llada_jax.models.config import ATTENTION
from llada_jax.models.quantize import QUANTIZE
from llada_jax.parallel import sharding
from llada_jax.parallel.placement import DTYPES


class UsageError(ValueError):
  """Arguments that cannot work together or name nothing usable: exit status 2."""


class _Stderr(logging.StreamHandler):
  """Writes to whatever sys.stderr is when a record comes (a caller that swaps it, as pytest's
  capture does, must not leave the handler on a closed stream)."""

  @property
  def stream(self):  # type: ignore[override]
    return sys.stderr

  @stream.setter
  def stream(self, value) -> None:
    pass


def log_to_stderr(fmt: str = "%(name)s: %(message)s") -> None:
  """Our own handler on the `llada_jax` logger: absl (imported by tfds/orbax) may already own the
  root logger, which would swallow the compile notices (whisper-jax's users took silent compiles
  for slowness)."""
  ours = logging.getLogger("llada_jax")
  handler = next((h for h in ours.handlers if isinstance(h, _Stderr)), None)
  if handler is None:
    handler = _Stderr()
    ours.addHandler(handler)
  handler.setFormatter(logging.Formatter(fmt))
  ours.setLevel(logging.INFO)
  ours.propagate = False


def command(module, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """`parser` set up for a subcommand module (NAME, HELP, a docstring for users,
  add_arguments(parser), run(args) -> exit status, optional LOG_FORMAT)."""
  parser.description = module.__doc__
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  module.add_arguments(parser)
  parser.set_defaults(_run=module.run, _parser=parser,
                      _log_format=getattr(module, "LOG_FORMAT", "%(name)s: %(message)s"))
  return parser


def execute(parser: argparse.ArgumentParser, argv: tp.Sequence[str] | None) -> int:
  """Parse and run. Exit status: 0 done, 2 a usage error (named on stderr: argparse's, or a
  UsageError the command raised), or the command's own status."""
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a bad argument (2, argparse's message printed)
    return int(e.code or 0)
  log_to_stderr(args._log_format)
  try:
    return args._run(args)
  except UsageError as e:
    print(f"{args._parser.prog}: error: {e}", file=sys.stderr)
    return 2


def main(module, argv: tp.Sequence[str] | None = None) -> int:
  """One subcommand as its own program (`python eval.py …` = `llada-jax eval …`)."""
  parser = command(module, argparse.ArgumentParser(prog=f"llada-jax {module.NAME}"))
  return execute(parser, sys.argv[1:] if argv is None else argv)


def mesh_arg(value: str) -> tuple[int, int, int]:
  try:
    shape = tuple(int(v) for v in value.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3 or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
    raise argparse.ArgumentTypeError(f"{value!r}: expected DATA,FSDP,TENSOR, positive sizes, at "
                                     f"most one of them -1 (e.g. 8,1,1 or -1,1,2)")
  return tp.cast(tuple[int, int, int], shape)


def add_compile_cache(p: argparse.ArgumentParser) -> None:
  p.add_argument("--no-compile-cache", action="store_true",
                 help="no persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, "
                      "$LLADA_JAX_CACHE_DIR or ~/.cache/llada_jax/xla)")


def add_devices(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("devices")
  g.add_argument("--mesh", type=mesh_arg, default=None, metavar="DATA,FSDP,TENSOR",
                 help="device mesh, one size may be -1 (all remaining devices); batches are split "
                      "over data × fsdp, weights placed by --sharding (default: one device; "
                      "eval over several processes: every device on data)")
  g.add_argument("--dtype", choices=DTYPES, default="auto",
                 help="compute dtype of the model (weights keep theirs); auto: bfloat16 on "
                      "GPU/TPU, the checkpoint's own (float32) on CPU")
  g.add_argument("--sharding", choices=sharding.PRESET_NAMES, default="full_fsdp",
                 help="weight placement, a training preset: full_fsdp (model dim over fsdp; heads, "
                      "MLP and vocabulary over tensor), lora_dp (whole on every data-parallel "
                      "device, split over tensor only: no weight gathers) or replicated")
  g.add_argument("--attention", choices=ATTENTION, default=None,
                 help="attention kernel: xla (einsums), dot_product "
                      "(jax.nn.dot_product_attention), cudnn (flash attention; GPU, bf16/fp16), "
                      "splash (TPU), auto (cudnn on GPU at half precision, splash on TPU, else "
                      "xla); default: the checkpoint's (xla)")
  g.add_argument("--no-merge-lora", action="store_true",
                 help="decode with the LoRA adapters as trained instead of folding them into "
                      "the weights once at load (the same up to float rounding)")
  g.add_argument("--quantize", choices=QUANTIZE, default="none",
                 help="int8: weight-only int8, one scale per output channel and 128 "
                      "inputs, for every linear layer and input token table (LM, Whisper, "
                      "Q-Former; the output head stays float), computed at load from the float "
                      "checkpoint; ~1/4-1/3 of float32's weight bytes. Needs the LoRA adapters "
                      "merged (not with --no-merge-lora)")


# -- decoding options ------------------------------------------------------------------------------
# Every option below maps to a field of WhisperSettings or LLaDASettings' decoding settings; the
# dests are the names `whisper_settings` / `llada_settings` read. Defaults are None where the
# settings (or the checkpoint) supply them, so a command can tell what was given.

WHISPER_OPTIONS = ("bucketed", "bucket_seconds", "no_suppress", "chunk_stride", "language",
                   "encoder_rows", "max_new_tokens")
LLADA_OPTIONS = ("gen_length", "steps", "block_length", "remasking", "temperature", "threshold",
                 "cache", "dual_cache", "adaptive_length", "mel_frames", "seed")
DELIBERATION_OPTIONS = ("masking", "mask_ratio", "deliberation_strategy", "num_chunks",
                        "deliberation_steps", "text_only", "hypothesis_tokens", "text_form")
DECODING_OPTIONS = WHISPER_OPTIONS + LLADA_OPTIONS + DELIBERATION_OPTIONS


def add_decoding(p: argparse.ArgumentParser, *, llada_title: str, deliberation_title: str) -> None:
  w, paper = WhisperSettings(), decoding.DeliberationSettings()
  g = p.add_argument_group("Whisper decoding")
  g.add_argument("--bucketed", action="store_true",
                 help="length buckets with shorter encoder input (faster on a CPU, less accurate "
                      "on short audio); default: every utterance padded to 30 s (3000 mel "
                      "frames), as Whisper was trained")
  g.add_argument("--bucket-seconds", type=float, nargs="+", default=None,
                 help=f"with --bucketed: bucket lengths in seconds (30 is always added; default "
                      f"{' '.join(map(str, w.bucket_seconds))})")
  g.add_argument("--no-suppress", action="store_true",
                 help="do not suppress Whisper's non-speech tokens (suppress_tokens)")
  g.add_argument("--chunk-stride", type=float, default=None, metavar="SECONDS",
                 help=f"long audio: seconds of overlap on each side of a 30 s window, in "
                      f"proportion for shorter windows (default: {w.chunk_stride})")
  g.add_argument("--language", default=None,
                 help=f"a multilingual Whisper: the language token (default: {w.language})")
  g.add_argument("--encoder-rows", type=int, default=None,
                 help="encode this many utterances at a time per data-parallel shard (default: 1 "
                      "on CPU, where the memory-bound attention over 1500 frames is ~2× faster "
                      "row by row; the whole batch on accelerators)")
  g.add_argument("--max-new-tokens", type=int, default=None,
                 help="Whisper's decoding length cap (default: half the decoder context)")

  g = p.add_argument_group(llada_title)
  g.add_argument("--gen-length", type=int, default=None,
                 help="response tokens of a Whisper-LLaDA / -LLaMA (default: the run's "
                      "response_len, else 128)")
  g.add_argument("--steps", type=int, default=None,
                 help="denoising steps of every diffusion pass (default: = gen length, the "
                      "paper's 128/128 setting)")
  g.add_argument("--block-length", type=int, default=None,
                 help="semi_ar: block length (default: 32)")
  g.add_argument("--remasking", default=None, choices=decoding.REMASKING,
                 help="which proposals stay masked each step (default: low_confidence)")
  g.add_argument("--temperature", type=float, default=None,
                 help="Gumbel noise on the logits (default: 0, greedy)")
  g.add_argument("--threshold", type=float, default=None,
                 help="Fast-dLLM parallel decoding: also commit every token with confidence ≥ τ")
  g.add_argument("--cache", action="store_true", help="Fast-dLLM prefix KV cache per block")
  g.add_argument("--dual-cache", action="store_true",
                 help="Fast-dLLM dual cache (implies --cache): each cached step runs the block "
                      "alone (semi_ar); deliberation's sub-blocks differ per row: prefix cache "
                      "there")
  g.add_argument("--adaptive-length", action="store_true",
                 help="gen length per batch from its longest utterance, bucketed (32/64/96/128)")
  g.add_argument("--mel-frames", type=int, default=None,
                 help="encoder input frames (default: the run's mel_frames, else 3000 = 30 s)")
  g.add_argument("--seed", type=int, default=None,
                 help="key for random masking / remasking / temperature (default: 0)")

  g = p.add_argument_group(deliberation_title)
  g.add_argument("--masking", default=None, choices=decoding.MASKING,
                 help=f"diffusion deliberation: which tokens are re-masked (default: "
                      f"{paper.masking})")
  g.add_argument("--mask-ratio", type=float, default=None,
                 help=f"diffusion deliberation: share of the hypothesis re-masked (default: "
                      f"{paper.mask_ratio})")
  g.add_argument("--deliberation-strategy", default=None, choices=decoding.STRATEGIES,
                 help=f"re-fill in one diffusion block or semi-AR sub-blocks (default: "
                      f"{paper.strategy})")
  g.add_argument("--num-chunks", type=int, default=None,
                 help=f"semi_ar deliberation: sub-blocks (default: {paper.num_chunks})")
  g.add_argument("--deliberation-steps", type=int, default=None,
                 help="denoising steps of the deliberation pass (default: --steps, else the "
                      "deliberation model's gen length)")
  g.add_argument("--text-only", action="store_true",
                 help="deliberation without audio embeddings (the paper's ablation)")
  g.add_argument("--hypothesis-tokens", type=int, default=None,
                 help="cut first-pass hypotheses to N tokens (default: whole, as Diffusion-ASR)")
  g.add_argument("--text-form", default=None, choices=text.TEXT_FORMS,
                 help="the form hypotheses are given to the LM in (default: the model's training "
                      "form, from its source.json)")


def checkpoint(spec: str, where: str) -> str:
  """The converted checkpoint folder `spec` names: itself, or a Hub id (ORG/NAME[@REVISION]) of a
  Whisper converted once into the local cache (`convert.converted`); a UsageError that starts with
  `where` (the flag as the user gave it) naming the repo and what to do when that cannot be
  done."""
  from llada_jax.inference.errors import ModelError
  from llada_jax.inference.factory import local_checkpoint

  try:
    return str(local_checkpoint(spec))
  except ModelError as e:
    raise UsageError(f"{where}: {e}") from e


def read_config(path: str, where: str):
  """The config of the checkpoint at `path`; a UsageError that starts with `where` (the flag and
  path as the user gave them, e.g. "--checkpoint ckpt/x") when it cannot be read."""
  try:
    return ckpt.read_config(path)
  except (ckpt.CheckpointError, ValueError, OSError, TypeError) as e:
    detail = str(e).removeprefix(f"{path}: ")
    raise UsageError(f"{where}: {detail}") from e


def given(args: argparse.Namespace, names: tp.Iterable[str]) -> list[str]:
  """The flags among `names` (dests) that were given on the command line."""
  return [flag(n) for n in names if getattr(args, n) not in (None, False)]


def flag(dest: str) -> str:
  return "--" + dest.replace("_", "-")


def chunk_stride(args: argparse.Namespace) -> float:
  """Long audio: seconds of overlap on each side of a 30 s window."""
  return WhisperSettings.chunk_stride if args.chunk_stride is None else args.chunk_stride


def whisper_settings(args: argparse.Namespace) -> WhisperSettings:
  w = WhisperSettings()
  pick = lambda name: getattr(w, name) if getattr(args, name) is None else getattr(args, name)
  return WhisperSettings(bucketed=args.bucketed, bucket_seconds=tuple(pick("bucket_seconds")),
                         suppress=not args.no_suppress, chunk_stride=chunk_stride(args),
                         language=pick("language"), encoder_rows=args.encoder_rows,
                         max_new_tokens=args.max_new_tokens)


def llada_settings(args: argparse.Namespace, strategy: str, *,
                   too_long: str | None = None) -> LLaDASettings:
  """LLaDASettings for `strategy` (STRATEGIES) from the decoding options; a ValueError from the
  settings becomes a UsageError."""
  base = LLaDASettings.paper(strategy).decoding
  if args.mask_ratio is not None and not 0.0 < args.mask_ratio <= 1.0:
    raise UsageError(f"--mask-ratio {args.mask_ratio}: expected 0 < ratio ≤ 1")

  def pick(name: str, default):
    value = getattr(args, name)
    return default if value is None else value

  cache = bool(args.cache or args.dual_cache)  # the dual cache extends the prefix cache
  try:
    if strategy == "ar":
      d: tp.Any = decoding.GreedySettings(max_new_tokens=args.gen_length)
    elif strategy == "deliberation":
      steps = args.deliberation_steps or args.steps or args.gen_length
      d = decoding.DeliberationSettings(
          strategy=pick("deliberation_strategy", base.strategy),
          masking=pick("masking", base.masking), mask_ratio=pick("mask_ratio", base.mask_ratio),
          steps=steps, num_chunks=pick("num_chunks", base.num_chunks),
          remasking=pick("remasking", base.remasking),
          temperature=pick("temperature", base.temperature), threshold=args.threshold, cache=cache)
    else:
      block = pick("block_length", 32) if strategy == "semi_ar" else None
      d = decoding.DiffusionSettings(
          gen_length=args.gen_length, steps=args.steps, block_length=block,
          remasking=pick("remasking", base.remasking),
          temperature=pick("temperature", base.temperature), threshold=args.threshold,
          cache=cache, dual_cache=args.dual_cache)
    return LLaDASettings(
        decoding=d, adaptive_length=args.adaptive_length, mel_frames=args.mel_frames,
        seed=pick("seed", 0), too_long=too_long or LLaDASettings.too_long,
        text_only=args.text_only, hypothesis_tokens=args.hypothesis_tokens,
        text_form=args.text_form)
  except ValueError as e:
    raise UsageError(str(e)) from e

