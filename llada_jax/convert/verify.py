"""`--verify`: the converted JAX model against the PyTorch reference built from the *source*
tensors.

The reference gets the source tensors renamed only (no transposes), so a wrong transform or a
swapped tensor in our tables shows up as a logit difference. LLaDA's reference is transformers'
LlamaForCausalLM with an additive all-zero 4-D mask (bidirectional).
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.convert import mapping as maps
from llada_jax.convert.source import Source
from llada_jax.models import checkpoint
from llada_jax.models.config import LMConfig, WhisperConfig

# Past these the conversion is called wrong (and tools/convert.py exits non-zero).
TOLERANCE = {"float32": {"max_abs_diff": 1e-3, "top1_agreement": 1.0},
             "bfloat16": {"kl": 2e-2, "top1_agreement": 0.95}}


def compare(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, float]:
  ref = ref_logits.astype(np.float64)
  ours = np.asarray(logits, np.float64)
  logp = ref - _logsumexp(ref)
  logq = ours - _logsumexp(ours)
  kl = float(np.mean(np.sum(np.exp(logp) * (logp - logq), axis=-1)))
  return {"max_abs_diff": float(np.abs(ref - ours).max()), "kl": kl,
          "top1_agreement": float(np.mean(ref.argmax(-1) == ours.argmax(-1)))}


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = x.max(-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def within_tolerance(metrics: dict[str, float], dtype: str) -> bool:
  tol = TOLERANCE[dtype]
  return all((metrics[k] >= v) if k == "top1_agreement" else (metrics[k] <= v)
             for k, v in tol.items())


def _renamed(source: Source, table: maps.Mapping, reference: maps.Mapping) -> dict[str, tp.Any]:
  """Source tensors under the reference model's names, layouts untouched."""
  import torch

  out = {}
  for name in source.keys():
    if table.skipped(name):
      continue
    target, rule = table.to_target(name)
    ref_name, ref_rule = reference.to_source(target)
    if rule.transform != ref_rule.transform:
      raise ValueError(f"{name}: layouts of {rule.transform!r} and {ref_rule.transform!r} differ")
    out[ref_name] = torch.from_numpy(np.asarray(source.get(name), np.float32))
  return out


def verify_lm(source: Source, table: maps.Mapping, out: str | Path, *,
              tokens: np.ndarray | None = None) -> dict[str, float]:
  import torch
  import transformers

  from llada_jax.convert.convert import hf_llama_json

  config: LMConfig = checkpoint.read_config(out)
  hf = hf_llama_json(config, {})
  hf.pop("architectures", None)
  hf.pop("model_type", None)
  ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf, attn_implementation="eager"))
  state = _renamed(source, table, maps.HF_LLAMA)
  missing, unexpected = ref.load_state_dict(state, strict=False)
  missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
  if missing or unexpected:
    raise ValueError(f"reference model: missing {missing}, unexpected {unexpected}")
  ref = ref.float().eval()
  if tokens is None:
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 32))
  ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
  mask = None if config.causal else torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
  with torch.no_grad():
    want = ref(input_ids=ids, attention_mask=mask).logits.numpy()
  got = forward_logits(checkpoint.load(out), jnp.asarray(tokens, jnp.int32))
  return compare(want, got)


def verify_whisper(source: Source, out: str | Path, *, mel: np.ndarray | None = None,
                   decoder_ids: np.ndarray | None = None) -> dict[str, float]:
  import torch
  import transformers

  from llada_jax.convert.convert import hf_whisper_json

  config: WhisperConfig = checkpoint.read_config(out)
  hf = hf_whisper_json(config, {})
  hf.pop("architectures", None)
  hf.pop("model_type", None)
  ref = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**hf)).eval()
  state = _renamed(source, maps.HF_WHISPER, maps.HF_WHISPER)
  missing, unexpected = ref.load_state_dict(state, strict=False)
  missing = [m for m in missing if m != "proj_out.weight"]
  if missing or unexpected:
    raise ValueError(f"reference model: missing {missing}, unexpected {unexpected}")
  rng = np.random.default_rng(0)
  if mel is None:
    mel = rng.standard_normal((1, config.n_mels, config.max_mel_frames)).astype(np.float32)
  if decoder_ids is None:
    decoder_ids = np.concatenate([[[config.decoder_start_token_id]],
                                  rng.integers(0, config.vocab_size, (1, 15))], axis=1)
  with torch.no_grad():
    want = ref(input_features=torch.from_numpy(np.array(mel, np.float32)),
               decoder_input_ids=torch.as_tensor(decoder_ids)).logits.numpy()
  got = forward_logits(checkpoint.load(out), jnp.asarray(mel),
                       jnp.asarray(decoder_ids, jnp.int32))
  return compare(want, got)


def forward_logits(model: nnx.Module, *inputs) -> np.ndarray:
  """The model's logits as one compiled program: op by op, a real checkpoint's forward compiles
  every operation on its own (hundreds of programs for Whisper tiny.en) and holds each
  intermediate, where one program compiles once and lets XLA free them as it goes."""
  return np.asarray(nnx.jit(lambda m, *x: m(*x))(model, *inputs))
