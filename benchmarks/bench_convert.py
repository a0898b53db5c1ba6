"""Conversion throughput and peak memory on a random LLaDA-layout sharded checkpoint (≥ 2 B params).

  python benchmarks/bench_convert.py [--params 2.1e9] [--dtype bfloat16] [--workdir
  /tmp/bench_convert]

Writes a GSAI-ML/LLaDA-shaped checkpoint (bf16 safetensors shards, LLaDA names and config.json),
converts it with tools/convert.py in a child process, and reports wall time, MB/s and the child's
peak RSS against the largest shard. Target: peak RSS ≤ largest shard + 4 GiB, so the real
LLaDA-8B (16 GB in bf16, ~5 GB shards) converts on a 24 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]


def llada_shapes(d: int, layers: int, mlp: int, vocab: int) -> dict[str, tuple[int, ...]]:
  shapes = {"model.transformer.wte.weight": (vocab, d)}
  for i in range(layers):
    b = f"model.transformer.blocks.{i}"
    shapes.update({f"{b}.q_proj.weight": (d, d), f"{b}.k_proj.weight": (d, d),
                   f"{b}.v_proj.weight": (d, d), f"{b}.attn_out.weight": (d, d),
                   f"{b}.ff_proj.weight": (mlp, d), f"{b}.up_proj.weight": (mlp, d),
                   f"{b}.ff_out.weight": (d, mlp), f"{b}.attn_norm.weight": (d,),
                   f"{b}.ff_norm.weight": (d,)})
  shapes["model.transformer.ln_f.weight"] = (d,)
  shapes["model.transformer.ff_out.weight"] = (vocab, d)
  return shapes


def write_checkpoint(out: Path, params: float, shard_bytes: int) -> tuple[int, int, int]:
  # LLaDA-8B's proportions (d 4096, MLP 3×d, vocab 126464) scaled down in depth to `params`.
  d, mlp, vocab = 2048, 6144, 126464
  per_layer = 4 * d * d + 3 * d * mlp
  layers = max(1, math.ceil((params - 2 * vocab * d) / per_layer))
  shapes = llada_shapes(d, layers, mlp, vocab)
  out.mkdir(parents=True)
  rng = np.random.default_rng(0)
  shards, current, size, weight_map = [], {}, 0, {}

  def flush():
    nonlocal current, size
    if current:
      name = f"model-{len(shards) + 1:05d}.safetensors"
      save_file(current, str(out / name), metadata={"format": "pt"})
      weight_map.update({k: name for k in current})
      shards.append(size)
      current, size = {}, 0

  for name, shape in shapes.items():
    array = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    if size + array.nbytes > shard_bytes:
      flush()
    current[name] = array
    size += array.nbytes
  flush()
  (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (out / "config.json").write_text(json.dumps({
      "model_type": "llada", "d_model": d, "n_layers": layers, "n_heads": 16, "n_kv_heads": 16,
      "mlp_hidden_size": mlp, "embedding_size": vocab, "vocab_size": 126464,
      "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False,
      "max_sequence_length": 4096, "mask_token_id": 126336, "eos_token_id": 126081}))
  total = sum(int(np.prod(s)) for s in shapes.values())
  return total, sum(shards), max(shards)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--params", type=float, default=2.1e9)
  ap.add_argument("--shard-gb", type=float, default=1.0)
  ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--workdir", default="/tmp/bench_convert")
  args = ap.parse_args()
  work = Path(args.workdir)
  shutil.rmtree(work, ignore_errors=True)
  t0 = time.time()
  n, disk, largest = write_checkpoint(work / "src", args.params, int(args.shard_gb * 2**30))
  print(f"wrote {n / 1e9:.2f} B params, {disk / 2**30:.2f} GiB in {time.time() - t0:.0f}s")
  start = time.time()
  subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), "--kind", "llada", "--src",
                  str(work / "src"), "--out", str(work / "out"), "--dtype", args.dtype],
                 check=True)
  wall = time.time() - start
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
  gib = 2**30
  rows = [("parameters", f"{n / 1e9:.2f} B"), ("source size", f"{disk / gib:.2f} GiB"),
          ("largest shard", f"{largest / gib:.2f} GiB"), ("wall time", f"{wall:.1f} s"),
          ("throughput", f"{disk / 2**20 / wall:.0f} MB/s"),
          ("peak RSS", f"{peak / gib:.2f} GiB"),
          ("peak RSS − largest shard", f"{(peak - largest) / gib:.2f} GiB (target ≤ 4)")]
  print("\n| metric | value |\n|---|---|")
  for k, v in rows:
    print(f"| {k} | {v} |")
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
