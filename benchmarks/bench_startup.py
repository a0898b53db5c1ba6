#!/usr/bin/env python3
"""Process start-up of a training or eval process: importing the training modules and loading a
checkpoint's tokenizer, against the paths they replaced (transformers' AutoTokenizer and
tensorboardX's SummaryWriter, which import torch wherever it is installed), in the same run.

    python benchmarks/bench_startup.py --tokenizer CHECKPOINT_DIR [--repeats 5]

Each sample is a fresh Python process; the two variants alternate, so both see the same machine.
The table gives the median wall seconds of each variant and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMON = ("import llada_jax.cli.train, llada_jax.train.loop, tempfile; "
          "from llada_jax.models import text; tb = tempfile.TemporaryDirectory(); ")
VARIANTS = {
    "baseline: AutoTokenizer + tensorboardX": COMMON + (
        "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1]); "
        "from tensorboardX import SummaryWriter; SummaryWriter(tb.name).close()"),
    "ours: text.load_tokenizer + ScalarWriter": COMMON + (
        "text.load_tokenizer(sys.argv[1]); "
        "from llada_jax.train import tensorboard; tensorboard.ScalarWriter(tb.name).close()"),
}


def sample(code: str, tokenizer: str) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import sys; " + code, tokenizer], check=True,
                 capture_output=True)
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokenizer", required=True, help="a converted checkpoint's folder")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  times = {name: [] for name in VARIANTS}
  for _ in range(args.repeats):
    for name, code in VARIANTS.items():
      times[name].append(sample(code, args.tokenizer))
  base = statistics.median(next(iter(times.values())))
  print(f"| variant | median s ({args.repeats} processes) | ratio |\n|---|---|---|")
  for name, t in times.items():
    print(f"| {name} | {statistics.median(t):.2f} | {statistics.median(t) / base:.2f} |")


if __name__ == "__main__":
  main()
