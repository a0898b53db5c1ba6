"""Torch training checkpoints (.pth / .pt / .ckpt), such as Diffusion-ASR's.

The tensors of the file's "model" entry (or of the whole file, if it is a bare state dict) are the
source; optimizer state and the rest are dropped. kind_hint is "diffusion_asr" when the names look
like Diffusion-ASR's (speech query tokens, Q-Former adapter, projection, LLaDA LoRA), else
"torch_state_dict".

Tensors that share their storage with one listed earlier (torch.save writes shared storage once:
tied weights such as a BERT LM head's decoder and its word embeddings) are `aliases` of it, not
`keys()`; `metadata["order"]` keeps every name in the file's order, aliases included.
"""

from __future__ import annotations

import json
import typing as tp
from pathlib import Path

from llada_jax.convert.source import ConversionError, TorchDictSource, tensors_only, torch_load

SUFFIXES = (".pth", ".pt", ".ckpt")
_DIFFUSION_ASR_PREFIXES = ("speech_query_tokens", "adapter.", "linear_proj.", "llada.")


def _plain_dict(obj: tp.Any) -> dict:
  """A JSON-safe dict from a config-like object (dict, something with to_dict, or a namespace)."""
  if obj is None:
    return {}
  if not isinstance(obj, tp.Mapping):
    if callable(getattr(obj, "to_dict", None)):
      obj = obj.to_dict()
    elif hasattr(obj, "__dict__"):
      obj = vars(obj)
    else:
      return {}
  return json.loads(json.dumps(dict(obj), default=str))


class TorchCheckpointSource(TorchDictSource):
  """A torch training checkpoint: the tensors of its "model" entry (or of the file if it is a bare
  state dict), memory-mapped. Optimizer state and the rest are dropped; "config" becomes
  `config`."""

  def __init__(self, path: Path, *, trust_pickle: bool = False):
    self.path = path
    ckpt = torch_load(path, trust_pickle=trust_pickle)
    if not isinstance(ckpt, tp.Mapping):
      raise ConversionError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("model"), tp.Mapping):
      self._tensors = tensors_only(ckpt["model"])
      self.config = _plain_dict(ckpt.get("config"))
      self.metadata = {"entries": sorted(map(str, ckpt)), "epoch": ckpt.get("epoch")}
    elif ckpt and len(tensors_only(ckpt)) == len(ckpt):
      self._tensors, self.config, self.metadata = dict(ckpt), {}, {"entries": ["<state dict>"]}
    else:
      raise ConversionError(f"{path}: no 'model' state dict in this checkpoint (entries: "
                            f"{sorted(map(str, ckpt))[:20]})")
    if not self._tensors:
      raise ConversionError(f"{path}: the checkpoint's state dict holds no tensors")
    looks_like_ours = any(k.startswith(_DIFFUSION_ASR_PREFIXES) for k in self._tensors)
    self.kind_hint = "diffusion_asr" if looks_like_ours else "torch_state_dict"
    self.metadata["order"] = list(self._tensors)
    self.aliases = _ties(self._tensors)
    self._tensors = {k: v for k, v in self._tensors.items() if k not in self.aliases}


def _ties(tensors: dict) -> dict[str, str]:
  """alias -> first name, for tensors that are the same view of the same storage."""
  first, ties = {}, {}
  for name, t in tensors.items():
    if t.numel() == 0:  # empty tensors may share a null data pointer without being tied
      continue
    view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
            t.dtype)
    if view in first:
      ties[name] = first[view]
    else:
      first[view] = name
  return ties
