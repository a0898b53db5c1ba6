"""Will the paper-scale train step fit? Compile it ahead of time for simulated meshes on this CPU.

    llada-jax plan                         # paper preset on 8, 16 and 64 devices
    llada-jax plan --meshes 1,8,1 1,4,2 --set remat=none
    llada-jax plan --meshes 1,8,1 --set sharding=lora_dp --json
    llada-jax plan --meshes 1,8,1 --unrolled   # layer stacks unrolled: the baseline
    llada-jax plan --inference                 # decoding on one device: bf16 vs int8 weights

Nothing is allocated: the model is `nnx.eval_shape`d, the inputs are `jax.ShapeDtypeStruct`s with
their shardings, and the jitted step (the one train.py runs) is `.lower(...).compile()`d for each
mesh over simulated CPU devices. XLA's `memory_analysis()` then gives the per-device bytes of
arguments (weights, optimizer state, batch), outputs, aliased (donated) buffers and temporaries.
`--json` prints one JSON object per mesh instead of the table, with the collectives of the
compiled step (`parallel.hlo`: count, result and operand bytes per kind; a loop body's counted
once, so with scanned layers one layer's weight gathers stand for all of them).

CPU numbers are a planning estimate, not a promise: XLA's CPU backend fuses and schedules
differently from TPU/GPU. In particular it has no native bf16 matmul, so it adds float32 copies of
the (gathered) bf16 weights that an accelerator would not make: read the bf16 rows as an upper
bound. Runtime overheads (CUDA context, collective buffers, fragmentation) are not in them.

`--inference` answers another question: does decoding one batch of 30 s utterances (default 8)
fit one device, with bf16 weights and with weight-only int8 (`--quantize`)? Weights are exact
(the abstract model); the encoder and LM phases are estimates (`inference.memory`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import typing as tp

from llada_jax.cli import options

NAME = "plan"
HELP = "will a train step fit? its memory and collectives, compiled ahead of time on this CPU"
GiB = 1 << 30
BUDGETS = (("TPU v5e", 16), ("H100", 80))


def _budget_columns() -> str:
  return " ".join(f"{n + ' ' + str(g) + 'G':>12}" for n, g in BUDGETS)


def _fits(peak: float) -> str:
  """yes/no per device budget for a peak of `peak` bytes, in the columns of `_budget_columns`."""
  return " ".join(f"{('yes' if peak <= g * GiB else 'no'):>12}" for _, g in BUDGETS)


def parse_mesh(text: str) -> tuple[int, int, int]:
  parts = tuple(int(p) for p in text.replace("x", ",").split(","))
  if len(parts) != 3 or any(p <= 0 for p in parts):
    raise argparse.ArgumentTypeError(f"mesh {text!r}: expected DATA,FSDP,TENSOR")
  return parts


def add_arguments(ap: argparse.ArgumentParser) -> None:
  ap.add_argument("--config", default="paper", help="train config preset or file (default: paper)")
  ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
  ap.add_argument("--meshes", nargs="+", type=parse_mesh,
                  default=[(1, 8, 1), (1, 16, 1), (1, 64, 1), (1, 16, 4)],
                  help="(data, fsdp, tensor) shapes; default 8, 16, 64 devices")
  ap.add_argument("--per-device-batch", type=int, default=4, help="rows per data shard (paper: 4)")
  ap.add_argument("--prompt-len", type=int, default=20, help="chat-template prompt tokens")
  ap.add_argument("--json", action="store_true",
                  help="one JSON object per mesh (memory, compile seconds, collectives)")
  ap.add_argument("--unrolled", action="store_true",
                  help="trace the layer stacks unrolled (one body per layer, as a Python loop "
                       "would): the baseline for the scanned program's compile time and memory")
  ap.add_argument("--inference", action="store_true",
                  help="decoding on one device instead of a train step: weights in bf16 and int8 "
                       "plus the KV cache and activations of one batch (--batch) of 30 s audio")
  ap.add_argument("--batch", type=int, default=8, help="with --inference: rows decoded at once")
  ap.add_argument("--cpu-scheduler", action="store_true",
                  help="keep XLA CPU's concurrency-optimised scheduler (much larger temporaries)")


def run(args: argparse.Namespace) -> int:
  if args.inference:
    return run_inference(args)

  # XLA reads its flags once, when the backend starts: set them before any device is used. The CPU
  # backend's default scheduler maximises concurrency and keeps every layer's gathered weights
  # alive at once (4× the temporaries of the paper model); TPU/GPU schedulers are memory-aware,
  # so plan with the CPU's memory-friendlier one.
  devices = max(a * b * c for a, b, c in args.meshes)
  flags = [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]
  if not args.cpu_scheduler:
    flags.append("--xla_cpu_enable_concurrency_optimized_scheduler=false")
  os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)
  import contextlib
  import dataclasses
  import json

  import jax

  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  if len(jax.devices()) < devices:
    raise options.UsageError(f"--meshes need {devices} simulated CPU devices, but the backend "
                             f"started with {len(jax.devices())} (XLA_FLAGS was read before)")
  from flax import nnx

  from llada_jax.models import stacked
  from llada_jax.models.whisper_llada import WhisperLLaDA
  from llada_jax.parallel import hlo, sharding
  from llada_jax.train import config as config_lib
  from llada_jax.train.step import Trainer

  base = config_lib.load(args.config, args.overrides)
  say = (lambda *a, **k: None) if args.json else print
  say(f"config {args.config}: LM {base.model.lm.n_layers}×{base.model.lm.d_model} "
        f"(vocab {base.model.lm.vocab_size}), Whisper {base.model.whisper.encoder_layers}×"
        f"{base.model.whisper.d_model}; compute {base.dtype}, frozen {base.param_dtype}, trained "
        f"{base.master_dtype}, remat {base.remat}; sequence {args.prompt_len} + {base.audio_len} + "
        f"{base.data.response_len}; {args.per_device_batch} rows per data shard; sharding "
        f"{base.sharding}; layers {'unrolled' if args.unrolled else 'scanned'}\n")
  header = (f"{'mesh (d,f,t)':>14} {'devices':>7} {'batch':>5} {'args':>8} {'temp':>8} "
            f"{'out-alias':>9} {'peak/dev':>9} {_budget_columns()} {'compile':>8}")
  say(header)
  say("-" * len(header))
  for shape in args.meshes:
    n = shape[0] * shape[1] * shape[2]
    batch = args.per_device_batch * shape[0] * shape[1]
    cfg = dataclasses.replace(base, mesh=shape, batch_size=batch * base.grad_accum)
    mcfg = cfg.resolved_model()
    model = nnx.eval_shape(lambda mcfg=mcfg: WhisperLLaDA(mcfg, rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh(shape, devices=jax.devices()[:n])
    trainer = Trainer(cfg, model, mesh, prompt_len=args.prompt_len, abstract=True)
    t0 = time.perf_counter()
    with stacked.unrolled() if args.unrolled else contextlib.nullcontext():
      compiled = trainer.lower().compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    peak = arg + temp + out - alias  # donated state: outputs reuse the argument buffers
    if args.json:
      print(json.dumps({
          "config": args.config, "overrides": args.overrides, "sharding": cfg.sharding,
          "mesh": list(shape), "devices": n, "batch": cfg.batch_size,
          "layers": "unrolled" if args.unrolled else "scanned",
          "compile_s": round(seconds, 2), "argument_bytes": arg, "output_bytes": out,
          "alias_bytes": alias, "temp_bytes": temp, "peak_bytes": peak,
          "collectives": hlo.summary(hlo.collectives(compiled.as_text()))}), flush=True)
      continue
    fits = _fits(peak)
    print(f"{str(shape):>14} {n:>7} {cfg.batch_size:>5} {arg / GiB:>7.2f}G {temp / GiB:>7.2f}G "
          f"{(out - alias) / GiB:>8.2f}G {peak / GiB:>8.2f}G {fits} {seconds:>7.1f}s", flush=True)
  return 0


def run_inference(args: argparse.Namespace) -> int:
  import json

  from llada_jax.inference.memory import DecodeShape, decode_memory
  from llada_jax.train import config as config_lib

  base = config_lib.load(args.config, args.overrides)
  shape = DecodeShape(batch=args.batch, prompt_len=args.prompt_len,
                      response_len=base.data.response_len)
  rows = [("bfloat16", "none"), ("bfloat16", "int8")]
  if not args.json:
    print(f"config {args.config}: decoding {shape.batch} × 30 s on one device; sequence "
          f"{shape.prompt_len} prompt + audio + {shape.response_len} response tokens\n")
    header = (f"{'weights':>16} {'LM':>7} {'encoder':>8} {'Q-Former':>8} {'total':>7} "
              f"{'KV cache':>8} {'enc phase':>9} {'LM phase':>8} {'peak':>7} {_budget_columns()}")
    print(header)
    print("-" * len(header))
  for dtype, mode in rows:
    m = decode_memory(base.model, shape, dtype=dtype, mode=mode)
    if args.json:
      print(json.dumps({"config": args.config, "dtype": dtype, "quantize": mode,
                        "batch": shape.batch, **m}), flush=True)
      continue
    g = {k: v / GiB for k, v in m.items()}
    fits = _fits(m["peak"])
    name = dtype if mode == "none" else f"{mode} ({dtype})"
    print(f"{name:>16} {g['weights_lm']:>6.2f}G {g['weights_encoder']:>7.2f}G "
          f"{g['weights_projector']:>7.2f}G {g['weights']:>6.2f}G {g['kv_cache']:>7.2f}G "
          f"{g['encoder_phase']:>8.2f}G {g['lm_phase']:>7.2f}G {g['peak']:>6.2f}G {fits}",
          flush=True)
  return 0


def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax plan ARGS` (tools/plan.py)."""
  return options.main(sys.modules[__name__], argv)
