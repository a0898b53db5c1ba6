#!/usr/bin/env python3
"""The demo's train step, as `make demo` runs it, under the two choices that make it cheaper.

    python benchmarks/bench_demo_step.py [--steps 6] [--batch 16] [--layers 2]

Times the jitted AR train step of preset `demo_llama` (Whisper tiny.en encoder outputs from the cache,
the Q-Former, SmolLM2-shaped LM cut to `--layers` layers, full fine-tune) on random weights, in one
process, for:

  default      SmolLM2's chat prompt with its 20-token default system turn (36 tokens), embeddings
               trained (the demo before 2026-11-26)
  demo         an empty system turn (20 tokens, `model.system_prompt=""`) and `freeze_embeddings`

and prints a table with each step's median time, its XLA FLOP count and the speed-up over `default`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# SmolLM2-135M-Instruct's chat prompt for "Transcribe the audio:" (llada_jax.text.prompt_ids):
# 36 tokens with the template's default system turn, 20 with an empty one (tests/test_convert.py).
PROMPTS = {"default": 36, "demo": 20}


def time_step(prompt_len: int, freeze: bool, args) -> tuple[float, float]:
  import jax
  import numpy as np

  from llada_jax import sharding
  from llada_jax.train import config as config_lib
  from llada_jax.train import state as state_lib
  from llada_jax.train.step import Trainer

  cfg = config_lib.load("demo_llama", [
      f"model.lm.n_layers={args.layers}", f"batch_size={args.batch}", "data.mel_frames=600",
      "data.response_len=24", "full_finetune=true", f"freeze_embeddings={str(freeze).lower()}"])
  mesh = sharding.make_mesh((1, 1, 1))
  model = state_lib.create_model(cfg, mesh, sharding.ShardingConfig.replicated())
  trainer = Trainer(cfg, model, mesh, prompt_len=prompt_len, from_encoder=True)
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  shapes = trainer.batch_shapes()
  batch = {"enc": rng.normal(size=shapes["enc"][0]).astype(np.float32),
           "prompt": rng.integers(0, 1000, shapes["prompt"][0]).astype(np.int32),
           "response": rng.integers(0, 1000, shapes["response"][0]).astype(np.int32),
           "response_len": np.full(shapes["response_len"][0], 15, np.int32),
           "valid": np.ones(shapes["valid"][0], bool)}
  batch = trainer.put_batch(batch)
  trainer.compile()
  flops = trainer._train_compiled.cost_analysis().get("flops", float("nan"))
  for _ in range(2):  # warm-up
    state, _ = trainer.train_step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, _ = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), flops


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--layers", type=int, default=2)
  args = ap.parse_args(argv)
  import logging

  logging.basicConfig(level=logging.ERROR)
  rows = {name: time_step(PROMPTS[name], name == "demo", args) for name in ("default", "demo")}
  base = rows["default"][0]
  print("| variant | prompt tokens | embeddings | step ms | GFLOP | vs default |")
  print("|---|---|---|---|---|---|")
  for name, (sec, flops) in rows.items():
    print(f"| {name} | {PROMPTS[name]} | {'frozen' if name == 'demo' else 'trained'} | "
          f"{1000 * sec:.0f} | {flops / 1e9:.0f} | {base / sec:.2f}× |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
