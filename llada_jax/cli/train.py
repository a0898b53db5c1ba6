"""Train a Whisper-LLaDA (or the Whisper-LLaMA baseline) on any mesh.

  llada-jax train --config paper --workdir runs/paper --set data.train=LibriSpeech/train-960 \
      data.dev=LibriSpeech/dev-other init_whisper=ckpt/whisper-large-v3 init_lm=ckpt/llada-8b

    llada-jax train --config configs/paper.py --workdir DIR [--set key=value ...] [--resume]

A run is a file in configs/ (`def config() -> TrainConfig`; a bare name such as `paper` or `tiny`
resolves there) or a .json dump of one; `--set` overrides dotted keys, type-checked
(`--set optimizer.peak_lr=1e-4 mesh=1,-1,1 data.train=/data/LibriSpeech/train-960`). Writes
DIR/metrics.jsonl (loss, tokens/s, step time, data wait, FLOPs, MFU; docs/training.md
"Throughput"), DIR/tb (TensorBoard), DIR/checkpoints (orbax; last k + best by validation loss)
and DIR/train.log; `--profile-steps A:B` adds a jax.profiler trace in DIR/profile. Compiled
executables are cached in ~/.cache/llada_jax/xla (`--no-compile-cache` turns that off).
`--resume` continues from the newest complete checkpoint exactly where it stopped (weights,
optimizer, RNG, data order). At the end the best checkpoint (by validation loss; else the
last) is exported to DIR/model, a self-contained checkpoint for `llada_jax.load` and `llada-jax eval
--checkpoint DIR/model` (`--no-export` skips it; `python -c "from llada_jax.train.export import
export_run; export_run(DIR, OUT)"` does it later).

Multi-host (see docs/training.md): every host runs this same command. With JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or LLADA_DISTRIBUTED=1 where JAX can detect the cluster
itself (Cloud TPU pod slices, SLURM, Open MPI), `jax.distributed.initialize()` runs first and waits
at most LLADA_DISTRIBUTED_TIMEOUT seconds (default 300) for the other processes. Process 0 writes
the logs, metrics and DIR/model; every process joins the checkpoints, validation and export.

Config fields, throughput, multi-host launch and the memory plan: docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing as tp

from llada_jax.cli import options

NAME = "train"
HELP = "train a Whisper-LLaDA or Whisper-LLaMA from a run config (configs/NAME.py)"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_arguments(ap: argparse.ArgumentParser) -> None:
  ap.add_argument("--config", required=True,
                  help="run config: configs/NAME.py (or NAME), or a .json dump")
  ap.add_argument("--workdir", required=True, help="run folder: metrics, TensorBoard, checkpoints")
  ap.add_argument("--set", dest="overrides", action="append", default=[], nargs="+",
                  metavar="KEY=VALUE", help="override a config field (dotted key), repeatable")
  ap.add_argument("--resume", action="store_true",
                  help="continue from the newest complete checkpoint in WORKDIR")
  ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
  ap.add_argument("--no-export", action="store_true", help="do not export DIR/model at the end")
  ap.add_argument("--peak-tflops", type=float, metavar="T",
                  help="bf16 peak TFLOP/s of one device for the logged MFU "
                       "(peak_tflops_per_device; default: by device kind, none on CPU)")
  ap.add_argument("--profile-steps", metavar="A:B",
                  help="write a jax.profiler trace of steps A..B to WORKDIR/profile "
                       "(profile_steps)")
  options.add_compile_cache(ap)


def run(args: argparse.Namespace) -> int:
  logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

  from llada_jax import config_files
  from llada_jax.config_files import ConfigError
  from llada_jax.train import config as config_lib

  overrides = [item for group in args.overrides for item in group]
  if args.peak_tflops is not None:
    overrides.append(f"peak_tflops_per_device={args.peak_tflops}")
  if args.profile_steps is not None:
    overrides.append(f"profile_steps={args.profile_steps.replace(':', ',')}")
  try:
    cfg = config_lib.load(args.config, overrides)
  except ConfigError as e:
    raise options.UsageError(f"config error: {e}") from e
  if args.print_config:
    import json

    print(json.dumps(config_files.to_dict(cfg), indent=2))
    return 0
  from llada_jax.parallel import distributed

  try:  # before anything touches a JAX backend
    distributed.initialize_from_env()
  except distributed.DistributedError as e:
    raise options.UsageError(str(e)) from e
  from llada_jax.parallel import compile_cache
  from llada_jax.train import loop

  compile_cache.enable(disable=args.no_compile_cache)

  try:
    summary = loop.run(cfg, args.workdir, resume=args.resume, progress=not args.no_progress,
                       export_to=None if args.no_export else os.path.join(args.workdir, "model"))
  except ConfigError as e:
    raise options.UsageError(f"config error: {e}") from e
  except loop.NonFiniteError as e:
    print(f"llada-jax train: {e}", file=sys.stderr)
    return 3
  logging.getLogger("llada_jax").info("done: %s", summary)
  return 0



def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax train ARGS` (train.py)."""
  return options.main(sys.modules[__name__], argv)
