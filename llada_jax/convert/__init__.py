"""Checkpoint conversion: read foreign checkpoints and map them into our models.

`open_source(path)` opens a checkpoint of any supported format as a `Source` (see `source.py`), each
format read by its own module:

  kind_hint                    what `path` is                                         module
  hf_whisper, hf_llama, llada  a directory with config.json and model.safetensors or  hf
  (hf_<model_type> otherwise)  pytorch_model.bin, single or sharded
                               (model.safetensors.index.json /
                               pytorch_model.bin.index.json)
  ct2_whisper                  a CTranslate2 Whisper directory (model.bin +           ctranslate2
                               config.json + tokenizer.json); its tensors are renamed
                               to transformers' Whisper names
  gguf_llama                   a .gguf file, or a directory holding exactly one.      gguf
                               Dequantised through transformers and torch, so it is
                               NOT streamed: the whole model sits in memory as float32
  diffusion_asr                a Diffusion-ASR training checkpoint (.pth/.pt) whose   torch_file
                               "model" entry holds the trained tensors
                               ("torch_state_dict" if the names do not look like it)

`path` may also be a Hugging Face Hub id, `ORG/NAME[@REVISION]` (a local path of that name wins;
`hf://ORG/NAME` forces the Hub): `hub` fetches what the readers read into huggingface_hub's cache.

Format modules (and `hub`) import only `source`, never this package's namespace, so importing any
of them (which runs this file first) finds nothing half-initialised. `convert` (source → our
checkpoint), `mapping` (name tables), `diffusion_asr` (the authors' training .pth, both ways),
`verify` and `cli` sit on top.
"""

from __future__ import annotations

from pathlib import Path

from llada_jax.convert import ctranslate2, gguf, hf, hub, torch_file
from llada_jax.convert.source import TOKENIZER_FILE_NAMES, ConversionError, Source

__all__ = ["TOKENIZER_FILE_NAMES", "ConversionError", "Source", "open_source"]

# Files a user may point at instead of their checkpoint directory.
_DIRECTORY_MEMBERS = ("config.json", "model.bin") + hf.WEIGHT_FILES


def open_source(path: str | Path, *, trust_pickle: bool = False) -> Source:
  """Open a checkpoint of any supported format (see the module docstring) as a `Source`.

  `trust_pickle` allows full unpickling of torch files that a weights-only load refuses; only for
  files from someone you trust, since unpickling can run arbitrary code.
  """
  path = hub.resolve_source(path)
  if not path.exists():
    raise ConversionError(f"{path}: no such file or directory")
  if path.is_file():
    suffix = path.suffix.lower()
    if suffix == ".gguf":
      return gguf.GGUFSource(path)
    if suffix in torch_file.SUFFIXES:
      return torch_file.TorchCheckpointSource(path, trust_pickle=trust_pickle)
    if path.name not in _DIRECTORY_MEMBERS:
      raise ConversionError(f"{path}: unknown checkpoint file: expected a directory, a .gguf file "
                            f"or a torch checkpoint ({', '.join(torch_file.SUFFIXES)})")
    path = path.parent
  return _open_directory(path, trust_pickle=trust_pickle)


def _open_directory(directory: Path, *, trust_pickle: bool) -> Source:
  has_config = (directory / "config.json").is_file()
  # CTranslate2 names its weights model.bin; transformers never does (pytorch_model.bin).
  if has_config and (directory / "model.bin").is_file():
    return ctranslate2.CT2WhisperSource(directory)
  if has_config:
    return hf.HFSource(directory, trust_pickle=trust_pickle)
  ggufs = sorted(directory.glob("*.gguf"))
  if len(ggufs) == 1:
    return gguf.GGUFSource(ggufs[0])
  found = sorted(p.name for p in directory.iterdir())[:20]
  raise ConversionError(
    f"{directory}: unknown checkpoint layout: expected config.json with "
    "model.safetensors[.index.json] or pytorch_model.bin[.index.json] (transformers / LLaDA), "
    f"config.json with model.bin (CTranslate2 Whisper), or exactly one .gguf file; found {found}")
