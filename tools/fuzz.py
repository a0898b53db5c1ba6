#!/usr/bin/env python3
"""Fuzz the parsers of user input (audio, path lists, data files, configs, checkpoints).

    python tools/fuzz.py --seconds 300                 # every target, 5 minutes each
    python tools/fuzz.py --seconds 60 ct2 safetensors  # some targets
    python tools/fuzz.py --list

Each target runs in its own process, one after another, with its address space capped
(`--memory-gb`: an allocation sized by a forged length field fails there as a MemoryError, which
counts as a failure) and a watchdog that ends a process stuck in C code. Per target it prints the
seconds run, the inputs tried (shrinking included) and each distinct failure: kind (exception
type and where it was raised, `timeout`, or `unnamed` for a named error whose message names no
input), first line, and the folder holding the minimal input (OUT/TARGET/NN/input, error.txt).
The contract and the mutations are in `llada_jax/testing/fuzz.py`, the targets in
`llada_jax/testing/fuzz_targets.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args) -> None:
  import faulthandler
  import resource

  limit = int(args.memory_gb * (1 << 30))
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  from llada_jax.testing import fuzz
  from llada_jax.testing.fuzz_targets import TARGETS

  target = TARGETS[args.child]
  work, out = Path(args.work), Path(args.out)
  # A hang that the per-input alarm cannot interrupt (inside C code): dump the stacks and exit;
  # the parent reports it with the input then in WORK/case.
  watchdog = max(30.0, 10 * target.time_limit)

  def arm(case) -> None:
    faulthandler.dump_traceback_later(watchdog, exit=True)

  report = fuzz.fuzz(target, work, args.seconds, on_case=arm)
  faulthandler.cancel_dump_traceback_later()
  fuzz.save_failures(report, out)
  (out / target.name / "summary.json").write_text(json.dumps(fuzz.summary(report), indent=2))


def run_target(name: str, args) -> dict:
  out = Path(args.out)
  shutil.rmtree(out / name, ignore_errors=True)
  (out / name).mkdir(parents=True)
  work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
  cmd = [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds), "--work",
         str(work), "--out", str(out), "--memory-gb", str(args.memory_gb)]
  start = time.monotonic()
  with open(out / name / "log.txt", "w") as log:
    try:
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                          timeout=args.seconds + 900).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  summary_file = out / name / "summary.json"
  if rc == 0 and summary_file.is_file():
    summary = json.loads(summary_file.read_text())
  else:  # the process died (signal, watchdog, memory): the input it was on is the failure
    crash = out / name / "crash"
    if (work / "case").is_dir():
      shutil.copytree(work / "case", crash / "input")
    summary = {"target": name, "seconds": round(time.monotonic() - start, 1), "inputs": None,
               "failures": [{"key": f"process died ({rc})", "hits": 1,
                             "message": f"see {out / name / 'log.txt'}; input in {crash}"}]}
  shutil.rmtree(work, ignore_errors=True)
  return summary


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("targets", nargs="*", help="targets to run (default: all)")
  ap.add_argument("--seconds", type=float, default=60.0, help="per target")
  ap.add_argument("--out", default="runs/fuzz", help="failures and summaries (default %(default)s)")
  ap.add_argument("--memory-gb", type=float, default=8.0, help="address-space cap per target")
  ap.add_argument("--list", action="store_true", help="list the targets and exit")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  ap.add_argument("--work", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    child(args)
    return 0
  from llada_jax.testing.fuzz_targets import TARGETS

  if args.list:
    for t in TARGETS.values():
      print(f"{t.name:14s} {t.doc}")
    return 0
  unknown = sorted(set(args.targets) - set(TARGETS))
  if unknown:
    ap.error(f"unknown target(s) {unknown}; --list shows them")
  results = []
  for name in args.targets or list(TARGETS):
    s = run_target(name, args)
    results.append(s)
    print(f"{name}: {s['seconds']} s, {s['inputs']} inputs, {len(s['failures'])} distinct "
          f"failure(s)", flush=True)
    for i, f in enumerate(s["failures"]):
      print(f"  [{i:02d}] {f['key']} (×{f['hits']}): {f['message']}", flush=True)
  Path(args.out, "summary.json").write_text(json.dumps(results, indent=2))
  return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.exit(main())
