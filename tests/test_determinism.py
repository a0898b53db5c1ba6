"""Bit-reproducible training on one machine: train.py twice, in fresh processes with different
PYTHONHASHSEEDs, the first with an empty persistent compilation cache (every program compiled)
and the second with that cache warm (every program loaded), gives the same metrics.jsonl (every
field but times), the same checkpoint steps and bit-identical exported weights — for the
Whisper-LLaMA (AR) and the Whisper-LLaDA (diffusion) objectives, with every stochastic part on:
data shuffling, the diffusion masks and t, `group_max` pad groups, LoRA dropout, the Q-Former's
dropout stream, and validation's decoded WER examples.

The contract this checks is the one docs/training.md states; what is only close (another CPU
type, mesh or backend) is not tested here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMES = {"tokens_per_s", "step_s", "val_s", "data_wait_s", "tflops_per_device", "compile_s",
         "seconds_per_step", "mfu"}
STEPS = 12
# 1 layer per stack (short compiles); both dropouts on; validation with decoded WER examples.
COMMON = [f"steps={STEPS}", "eval_every=6", "save_every=6", "keep_last=2", "log_every=1",
          "data.wer_examples=4", "model.whisper.encoder_layers=1", "model.qformer.num_layers=1",
          "model.lm.n_layers=1", "model.qformer.dropout=0.1", "model.lm.lora.dropout=0.1"]
OBJECTIVES = {
    "diffusion": ["data.pad_group=2"],
    "ar": ["objective=ar", "model.lm.causal=true"],
}


def train(workdir: Path, corpus: dict, extra: list[str], cache: Path, hash_seed: str):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), PYTHONHASHSEED=hash_seed,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", "tiny", "--workdir", str(workdir),
         "--no-progress", "--set", f"data.train={corpus['train']}", f"data.dev={corpus['dev']}",
         f"data.tokenizer={corpus['tokenizer']}", *COMMON, *extra]
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def metrics(workdir: Path) -> list[dict]:
  rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def exported(folder: Path) -> dict[str, tuple]:
  """The exported checkpoint's config and every weight's (dtype, shape, bytes); orbax's own
  metadata files carry write times, so the arrays are compared, not the files."""
  import numpy as np

  from llada_jax.models import checkpoint

  out = {"config.json": (folder / "config.json").read_text()}
  for name, value in checkpoint.iter_params(folder):
    a = np.asarray(value)
    out[name] = (str(a.dtype), a.shape, a.tobytes())
  return out


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_same_seed_same_run_bit_for_bit(corpus, tmp_path, objective):
  cache = tmp_path / "xla"
  cache.mkdir()
  first, second = tmp_path / "first", tmp_path / "second"
  log = train(first, corpus, OBJECTIVES[objective], cache, hash_seed="1")
  assert any(cache.iterdir()), "the first run wrote its programs to the cache"
  written = {p.name for p in cache.iterdir()}
  train(second, corpus, OBJECTIVES[objective], cache, hash_seed="2")
  assert {p.name for p in cache.iterdir()} == written, "the second run compiled something new"
  want = metrics(first)
  assert [r["step"] for r in want if "loss" in r] == list(range(1, STEPS + 1))
  assert any("dev_wer" in r for r in want), log[-2000:]
  assert metrics(second) == want
  steps = lambda w: sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())
  assert steps(first) == steps(second) == [6, 12]
  want_weights = exported(first / "model")
  assert len(want_weights) > 10 and exported(second / "model") == want_weights
