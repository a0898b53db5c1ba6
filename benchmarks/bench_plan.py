#!/usr/bin/env python3
"""Compile time and per-device memory of the paper-scale train step: scanned layer stacks against
the unrolled baseline (one traced body per layer, as the Python loops were), in the same run.

    python benchmarks/bench_plan.py [--mesh 1,8,1] [--variants scanned unrolled] [--set K=V ...]
    python benchmarks/bench_plan.py --variants scanned scanned:remat=names scanned:sharding=lora_dp

Each variant is one `tools/plan.py --json` process (fresh XLA, no compilation cache): the paper
config AOT-compiled for a simulated CPU mesh, nothing allocated. A variant is `scanned` or
`unrolled`, optionally followed by `:KEY=VALUE,...` config overrides for that variant only. The
table gives compile seconds, XLA's per-device peak (arguments + temporaries, donated state
aliased), the all-gathers of the compiled program, and each variant's compile time and peak as a
ratio to the first variant's. A collective inside a loop body is counted once (`parallel.hlo`),
so a scanned program's all-gather count is per layer body, not per step: compare bytes of the
unrolled program with care. CPU numbers: an upper bound on memory (the CPU backend keeps float32
copies of bf16 weights), and compile seconds of a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PLAN = Path(__file__).resolve().parents[1] / "tools" / "plan.py"
GiB = 1 << 30


def run_variant(variant: str, mesh: str, config: str, overrides: list[str],
                per_device_batch: int) -> dict:
  layers, _, extra = variant.partition(":")
  if layers not in ("scanned", "unrolled"):
    raise SystemExit(f"variant {variant!r}: expected scanned or unrolled[:KEY=VALUE,...]")
  sets = overrides + [kv for kv in extra.split(",") if kv]
  cmd = [sys.executable, str(PLAN), "--config", config, "--meshes", mesh, "--json",
         "--per-device-batch", str(per_device_batch)]
  if sets:
    cmd += ["--set", *sets]
  if layers == "unrolled":
    cmd.append("--unrolled")
  print(f"# {variant}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--config", default="paper")
  ap.add_argument("--mesh", default="1,8,1", help="DATA,FSDP,TENSOR (default 1,8,1)")
  ap.add_argument("--per-device-batch", type=int, default=4)
  ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                  help="overrides for every variant")
  ap.add_argument("--variants", nargs="+", default=["scanned", "unrolled"])
  args = ap.parse_args(argv)

  rows = [(v, run_variant(v, args.mesh, args.config, args.overrides, args.per_device_batch))
          for v in args.variants]
  base = rows[0][1]
  print(f"\n{args.config} on mesh ({args.mesh}), {args.per_device_batch} rows per data shard, "
        f"global batch {base['batch']}\n")
  print("| variant | compile (s) | args (GiB) | temporaries (GiB) | peak / device (GiB) "
        f"| all-gather | compile vs {rows[0][0]} | peak vs {rows[0][0]} |")
  print("|---|---|---|---|---|---|---|---|")
  for name, r in rows:
    ag = r["collectives"]["all-gather"]
    print(f"| {name} | {r['compile_s']:.0f} | {r['argument_bytes'] / GiB:.2f} | "
          f"{r['temp_bytes'] / GiB:.2f} | {r['peak_bytes'] / GiB:.2f} | "
          f"{ag['count']} ops, {ag['result_bytes'] / 1e9:.2f} GB | "
          f"{r['compile_s'] / base['compile_s']:.2f}× | "
          f"{r['peak_bytes'] / base['peak_bytes']:.2f}× |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
