"""Convert PyTorch / CTranslate2 / GGUF / Diffusion-ASR checkpoints to llada-jax, and back.

  llada-jax convert --kind whisper --src openai-whisper-large-v3/ --out ckpt/whisper-large-v3
  llada-jax convert --kind whisper --src openai/whisper-large-v3 --out ckpt/whisper-large-v3
  llada-jax convert --kind {whisper,llada,llama,whisper_llada} --src SRC --out OUT
      [--dtype float32|bfloat16] [--verify] [--whisper SRC --llm SRC] [--trust-pickle]
  llada-jax convert --export-torch --src OUT --out DIR
  llada-jax convert --export-torch --src WHISPER_LLADA_OUT --out x.pth

`--kind llada` on a LLaMA-family source (HF or GGUF) makes a bidirectional LLaDA out of it (the
AR→diffusion adaptation); it needs `--mask-id`. `--export-torch` writes a folder of safetensors +
config.json, except for a whisper_llada checkpoint: that becomes one .pth in the authors'
Diffusion-ASR layout ({"model": trained Q-Former + LoRA tensors, "config", "epoch", ...}), which
their inference.py loads over its own Whisper and LLaDA.

A Hub id (`ORG/NAME[@REVISION]`) is fetched through huggingface_hub (its cache, HF_HUB_OFFLINE,
HF_TOKEN): config.json, the tokenizer and one set of weights (safetensors before .bin), nothing
else. Offline with the repo not cached: exit 2, naming the repo and what to do. Sources and what
each reads: README.md, "Convert checkpoints".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing as tp

from llada_jax.cli import options
from llada_jax.convert import convert as conv
from llada_jax.convert import verify as ver
from llada_jax.convert.mapping import MappingError
from llada_jax.convert.source import ConversionError
from llada_jax.models.checkpoint import CheckpointError
from llada_jax.models.config import ConfigError

NAME = "convert"
HELP = "convert checkpoints (HF, faster-whisper, GGUF, LLaDA, Diffusion-ASR .pth) and back"


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--kind", choices=conv.KINDS)
  p.add_argument("--src", required=True, help="source checkpoint (dir, .gguf, .pth, or a Hub id "
                 "ORG/NAME[@REVISION]: a local path of that name wins, hf://ORG/NAME forces the "
                 "Hub) or, with --export-torch, a converted checkpoint")
  p.add_argument("--out", required=True)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--verify", action="store_true", help="compare logits with the PyTorch reference")
  p.add_argument("--whisper", help="whisper_llada: base Whisper checkpoint (or Hub id)")
  p.add_argument("--llm", help="whisper_llada: base LLM checkpoint (or Hub id)")
  p.add_argument("--trust-pickle", action="store_true",
                 help="allow full unpickling of torch files (can run code: trusted files only)")
  p.add_argument("--mask-id", type=int, help="mask token id when making a LLaDA from a LLaMA")
  p.add_argument("--qformer-heads", type=int, default=12)
  p.add_argument("--lora-alpha", type=float, help="whisper_llada: LoRA alpha when the .pth's "
                 "stored config has none (default 32); an error if it contradicts the stored one")
  p.add_argument("--export-torch", action="store_true")
  p.add_argument("--overwrite", action="store_true")


def run_verify(args, plan: conv.Plan) -> dict:
  source, table, _ = plan.steps[0]
  if args.kind == "whisper":
    return ver.verify_whisper(source, args.out)
  if args.kind in ("llada", "llama"):
    return ver.verify_lm(source, table, args.out)
  raise ConversionError("--verify checks whisper, llada and llama conversions; for whisper_llada "
                        "verify the base --whisper and --llm conversions")


def run(args: argparse.Namespace) -> int:
  if not args.export_torch and args.kind is None:
    raise options.UsageError("--kind is required (unless --export-torch)")
  start = time.time()
  try:
    if args.export_torch:
      out = conv.export_torch(args.src, args.out, overwrite=args.overwrite)
      print(f"exported {args.src} → {out} in {time.time() - start:.1f}s")
      return 0
    plan = conv.convert(args.kind, args.src, args.out, dtype=args.dtype, whisper=args.whisper,
                 llm=args.llm, trust_pickle=args.trust_pickle, mask_id=args.mask_id,
                 qformer_heads=args.qformer_heads, lora_alpha=args.lora_alpha,
                 overwrite=args.overwrite)
    print(f"converted {args.src} → {args.out} in {time.time() - start:.1f}s", file=sys.stderr)
    if args.verify:
      metrics = run_verify(args, plan)
      print(json.dumps(metrics))
      if not ver.within_tolerance(metrics, args.dtype):
        print(f"verify: outside tolerance {ver.TOLERANCE[args.dtype]}", file=sys.stderr)
        return 1
    return 0
  except (ConversionError, MappingError, CheckpointError, ConfigError, FileExistsError) as e:
    raise options.UsageError(str(e)) from e


def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax convert ARGS` (tools/convert.py)."""
  return options.main(sys.modules[__name__], argv)
