"""Transcribe audio files: a first pass with --checkpoint (a Whisper, a Whisper-LLaMA or a
Whisper-LLaDA) and, with --deliberate, Whisper-LLaDA deliberation over its hypotheses (the
paper's cascade).

    llada-jax transcribe talk.m4a --checkpoint ckpt/whisper-tiny.en
    llada-jax transcribe clips/ 'more/**/*.mp3' list.txt --checkpoint ckpt/whisper \\
        --deliberate ckpt/whisper-llada --mask-ratio 0.3 --out clips.jsonl

AUDIO: audio files (wav, flac, ogg, mp3, m4a, …: libsndfile, else FFmpeg through PyAV; any rate,
mixed to 16 kHz mono), folders (every audio file below them, by extension), glob patterns (quoted,
`**` spans folders) or lists of paths (LIST.txt: one per line; LIST.jsonl: {"path": …} per line).
A file named twice is transcribed once.

Output: OUT (default transcripts.jsonl) gets one line per file, {"path", "text"} (with
--deliberate also "first_pass"), or {"path", "error"} for a file that failed (unreadable, not
audio, a missing listed file): the run goes on. At the end TXT (default: OUT with .txt) holds one
line per audio file in input order: its text, empty where it failed.

Resuming. Each line is appended and fsynced as its file finishes, so a killed run loses nothing
finished: run the same command again and the paths already in OUT are skipped (a torn last line
is dropped, the file rewritten without it atomically, and that file done again). Error records
count as done; --retry-errors does them again. OUT's settings (checkpoints, decoding options) are
kept beside it in OUT with .settings.json: resuming with other settings is refused (--overwrite
starts over).

Long audio. Every model sees only its window: Whisper 30 s, a Whisper-LLaDA / Whisper-LLaMA its
mel_frames / 100 s (30 s for the paper's models). Longer files are cut into overlapping windows of
the shorter window of the models in use (--chunk-stride of overlap on each side, for a 30 s
window; in proportion for others), every window is transcribed (and deliberated with its own
audio and first-pass text), and the windows' texts are merged at their best word alignment. Unlike
eval.py's Whisper-LLaDA strategies, which cut such audio to the window as the authors' inference
does, nothing is cut away.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing as tp
from pathlib import Path

from llada_jax.cli import options
from llada_jax.cli.options import UsageError
from llada_jax.data import files
from llada_jax.data.journal import Journal, JournalError
from llada_jax.evaluation.outputs import jsonable, write_atomic
from llada_jax.inference.errors import ModelError
from llada_jax.models.config import WhisperConfig, WhisperLLaDAConfig
from llada_jax.parallel import compile_cache

NAME = "transcribe"
HELP = "transcribe audio files (a first pass, optionally deliberated), resumably"
log = logging.getLogger(__name__)

FIRST_PASS_LLADA = ("diffusion", "semi_ar")


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("audio", nargs="+", metavar="AUDIO",
                 help="audio files, folders, glob patterns or lists of paths (.txt, .jsonl)")
  p.add_argument("--checkpoint", required=True, metavar="CKPT",
                 help="the first pass: a converted Whisper, Whisper-LLaMA or Whisper-LLaDA, or "
                      "a Hub id of a Whisper (ORG/NAME[@REVISION], e.g. openai/whisper-large-v3; "
                      "converted once into ~/.cache/llada_jax/converted)")
  p.add_argument("--deliberate", metavar="CKPT2",
                 help="a converted Whisper-LLaDA that deliberates over the first pass")
  p.add_argument("--strategy", choices=FIRST_PASS_LLADA,
                 help="a Whisper-LLaDA first pass: standalone diffusion or semi-AR blocks "
                      "(default: diffusion; a Whisper-LLaMA decodes AR, a Whisper as Whisper)")
  p.add_argument("--out", default="transcripts.jsonl", metavar="FILE.jsonl",
                 help="JSONL output, resumed if it exists (default: %(default)s)")
  p.add_argument("--txt", metavar="FILE.txt",
                 help="plain-text output, one line per audio file (default: OUT with .txt)")
  p.add_argument("--batch-size", type=int, default=16,
                 help="windows per batch, each model (default: %(default)s)")
  p.add_argument("--overwrite", action="store_true", help="start OUT over instead of resuming")
  p.add_argument("--retry-errors", action="store_true",
                 help="resuming: transcribe again the files OUT has error records for")
  p.add_argument("--quiet", action="store_true", help="no progress bar, no texts on stdout")
  options.add_compile_cache(p)
  options.add_devices(p)
  options.add_decoding(p, llada_title="Whisper-LLaDA / -LLaMA decoding (each pass)",
                       deliberation_title="deliberation (with --deliberate)")


# -- settings ----------------------------------------------------------------------------------


def first_settings(args: argparse.Namespace):
  """The first pass's settings, from the kind of --checkpoint."""
  config = options.read_config(args.checkpoint, f"--checkpoint {args.checkpoint}")
  llada = options.given(args, options.LLADA_OPTIONS)
  if args.strategy is not None:
    llada.insert(0, "--strategy")
  if isinstance(config, WhisperConfig):
    llada = [f for f in llada if f != "--seed"]  # the seed may serve deliberation alone
    if llada and args.deliberate is None:
      raise UsageError(f"{', '.join(llada)}: for a Whisper-LLaDA --checkpoint; {args.checkpoint} "
                       f"is a Whisper")
    return options.whisper_settings(args)
  if not isinstance(config, WhisperLLaDAConfig):
    raise UsageError(f"--checkpoint {args.checkpoint}: a {type(config).__name__}, not a speech "
                     f"model (a Whisper, Whisper-LLaMA or Whisper-LLaDA)")
  whisper_only = [f for f in options.given(args, options.WHISPER_OPTIONS)
                  if f != "--chunk-stride"]  # the cascade's windows
  if whisper_only:
    raise UsageError(f"{', '.join(whisper_only)}: for a Whisper --checkpoint; {args.checkpoint} "
                     f"is a Whisper-LLaDA / -LLaMA")
  if config.lm.causal:
    if args.strategy is not None:
      raise UsageError(f"--strategy: {args.checkpoint} is a causal Whisper-LLaMA, which decodes "
                       f"AR")
    return options.llada_settings(args, "ar")
  return options.llada_settings(args, args.strategy or "diffusion")


def deliberation_settings(args: argparse.Namespace):
  given = options.given(args, options.DELIBERATION_OPTIONS)
  if args.deliberate is None:
    if given:
      raise UsageError(f"{', '.join(given)}: only with --deliberate CKPT2")
    return None
  config = options.read_config(args.deliberate, f"--deliberate {args.deliberate}")
  if not isinstance(config, WhisperLLaDAConfig) or config.lm.causal:
    kind = ("a causal Whisper-LLaMA" if isinstance(config, WhisperLLaDAConfig)
            else f"a {type(config).__name__}")
    raise UsageError(f"--deliberate {args.deliberate}: {kind}; deliberation needs a "
                     f"(bidirectional) Whisper-LLaDA")
  return options.llada_settings(args, "deliberation")


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
  """(OUT, TXT, OUT's settings file), checked."""
  out = Path(args.out)
  txt = Path(args.txt) if args.txt else out.with_suffix(".txt")
  for flag, path in (("--out", out), ("--txt", txt)):
    if path.is_dir():
      raise UsageError(f"{flag} {path}: is a folder (expected a file)")
    if not path.absolute().parent.is_dir():
      raise UsageError(f"{flag} {path}: no such folder {path.absolute().parent}")
  if out.absolute() == txt.absolute():
    raise UsageError(f"--txt {txt}: the same file as --out")
  return out, txt, out.with_suffix(".settings.json")


def _differences(old, new, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
  return [] if old == new else [f"{prefix[:-1]}: {old!r} → {new!r}"]


# -- the run -----------------------------------------------------------------------------------

key = files.path_key  # what makes two spellings of a path one file


def run(args: argparse.Namespace) -> int:
  """Exit status: 0 when every file has a line in OUT (texts or error records)."""
  if args.batch_size < 1:
    raise UsageError(f"--batch-size {args.batch_size}: expected ≥ 1")
  compile_cache.enable(disable=args.no_compile_cache)
  from llada_jax.parallel.placement import Placement, PlacementError

  try:  # the devices, before any output is written
    args.placement = Placement.create(args.mesh, args.sharding)
    args.placement.global_batch(args.batch_size)
  except PlacementError as e:
    raise UsageError(f"--mesh / --batch-size: {e}") from e
  args.checkpoint = options.checkpoint(args.checkpoint, f"--checkpoint {args.checkpoint}")
  if args.deliberate is not None:
    args.deliberate = options.checkpoint(args.deliberate, f"--deliberate {args.deliberate}")
  first = first_settings(args)
  delib = deliberation_settings(args)
  out, txt, settings_file = output_paths(args)
  try:
    listing = files.list_many(args.audio)
  except files.FilesError as e:
    raise UsageError(f"AUDIO {e}") from e

  settings = jsonable({"checkpoint": os.path.abspath(args.checkpoint),
                       "first_pass": dataclasses.asdict(first),
                       "deliberate": args.deliberate and os.path.abspath(args.deliberate),
                       "deliberation": delib and dataclasses.asdict(delib),
                       "chunk_stride": options.chunk_stride(args), "dtype": args.dtype})
  try:
    journal = Journal(out, overwrite=args.overwrite)
  except (JournalError, OSError) as e:
    raise UsageError(f"--out {out}: not a transcript file to resume ({e})") from e
  if journal.records and settings_file.is_file():
    try:
      made_with = json.loads(settings_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise UsageError(f"{settings_file}: unreadable ({e}); --overwrite starts over") from e
    changed = _differences(made_with, settings)
    if changed:
      raise UsageError(f"--out {out} holds transcripts made with other settings ("
                       f"{'; '.join(changed[:4])}): give another --out, or --overwrite to start "
                       f"over")
  with journal:
    if journal.torn:
      log.info("%s: dropped a torn last line (a killed run's); that file is done again", out)
    if args.retry_errors:
      journal.rewrite([r for r in journal.records if "error" not in r])
    write_atomic(settings_file, json.dumps(settings, indent=2) + "\n")
    done = {key(r["path"]) for r in journal.records if isinstance(r.get("path"), str)}
    done_before = len(done)
    for e in listing.errors:  # missing listed files, bad list lines: error records, no model
      if key(e.path) not in done:
        journal.append({"path": e.path, "error": e.reason})
        done.add(key(e.path))
    todo = [f.path for f in listing.files if key(f.path) not in done]
    if todo:
      _transcribe(args, first, delib, todo, journal)
    by_path = {key(r["path"]): r for r in journal.records if isinstance(r.get("path"), str)}
  texts = [by_path.get(key(f.path), {}).get("text") or "" for f in listing.files]
  write_atomic(txt, "".join(t.replace("\n", " ") + "\n" for t in texts))
  failed = sum("error" in by_path.get(key(f.path), {"error": 1}) for f in listing.files)
  print(f"{len(listing.files) - failed} of {len(listing.files)} audio files transcribed"
        f"{f', {failed} failed' if failed else ''}"
        f"{f', {len(listing.errors)} listing error(s)' if listing.errors else ''}"
        f"{f' ({done_before} done before)' if done_before else ''}; wrote {out} and {txt}",
        file=sys.stderr)
  return 0


def _transcribe(args: argparse.Namespace, first, delib, todo: list[str],
                journal: Journal) -> None:
  from tqdm import tqdm

  from llada_jax import inference
  from llada_jax.inference.cascade import Cascade

  try:
    kw = dict(batch_size=args.batch_size, mesh=args.placement, dtype=args.dtype,
              attention=args.attention, merge_lora=not args.no_merge_lora,
              quantize=args.quantize)
    first_t = inference.open(args.checkpoint, first, **kw)
    delib_t = None if delib is None else inference.open(args.deliberate, delib, **kw)
    cascade = Cascade(first_t, delib_t, chunk_stride=options.chunk_stride(args))
  except ModelError as e:
    raise UsageError(str(e)) from e
  except ValueError as e:  # a stride leaving no step
    raise UsageError(f"--chunk-stride {options.chunk_stride(args)}: {e}") from e
  bar = tqdm(total=len(todo), unit="file", desc="transcribe", disable=args.quiet or None)
  try:
    for r in cascade(todo):
      record: dict[str, tp.Any] = {"path": r.path}
      if r.error is None:
        record["text"] = r.text
      if r.first_pass is not None:
        record["first_pass"] = r.first_pass
      if r.error is not None:
        record["error"] = r.error
      journal.append(record)
      if not args.quiet:
        bar.write(f"{r.path}: {r.text if r.error is None else '[error] ' + r.error}")
      bar.update(1)
  finally:
    bar.close()


def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax transcribe ARGS`."""
  return options.main(sys.modules[__name__], argv)
