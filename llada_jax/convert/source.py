"""What every checkpoint reader shares: the `Source` interface, its error, and byte/torch helpers.

A `Source` lists a checkpoint's tensors under the source's own names and loads them one at a time
as numpy arrays, so converting a 16 GB LLaDA never holds more than one tensor in memory (plus, for
torch `.bin` shards, one memory-mapped shard). Each format has its own module (`hf`, `torch_file`,
`gguf`, `ctranslate2`) that imports only this one; `llada_jax.convert.open_source` tells them apart.

Names are the source's own except for CTranslate2, whose fused, slash-separated names would only
make every mapper re-implement the split. Tied tensors that a format stores once are listed in
`aliases` (alias -> stored name), not in `keys()`; `get` accepts either name.
"""

from __future__ import annotations

import abc
import json
import shutil
import typing as tp
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

# Files that make up a tokenizer (and Whisper's text normaliser / feature-extractor settings, which
# travel with it); whichever of these sit beside the weights are the source's tokenizer files.
TOKENIZER_FILE_NAMES = (
  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
  "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
  "chat_template.json", "normalizer.json", "preprocessor_config.json",
  "vocabulary.txt", "vocabulary.json",  # CTranslate2's own vocabulary list
)


class ConversionError(Exception):
  """A checkpoint cannot be read: missing, truncated, corrupt or of an unknown layout."""


class Source(abc.ABC):
  """Tensors of one checkpoint, by the source's names, loaded one at a time as numpy arrays."""

  path: Path
  kind_hint: str
  config: dict  # the source's config.json, or one derived from the format's metadata
  aliases: dict[str, str]  # tied names the format stores once: alias -> name in keys()
  metadata: dict  # format-level extras (versions, raw foreign configs, epoch, ...)

  @abc.abstractmethod
  def keys(self) -> list[str]:
    """Names of the stored tensors (aliases excluded)."""

  @abc.abstractmethod
  def shape(self, name: str) -> tuple[int, ...]:
    """Shape of one tensor, without loading it where the format allows."""

  @abc.abstractmethod
  def dtype(self, name: str) -> np.dtype:
    """Dtype the tensor is stored in (bfloat16 comes back as `ml_dtypes.bfloat16`)."""

  @abc.abstractmethod
  def get(self, name: str) -> np.ndarray:
    """Load one tensor as a fresh, writable, C-contiguous numpy array."""

  @property
  def tokenizer_files(self) -> list[Path]:
    directory = self.path if self.path.is_dir() else self.path.parent
    return [directory / n for n in TOKENIZER_FILE_NAMES if (directory / n).is_file()]

  def save_tokenizer(self, out_dir: str | Path) -> list[Path]:
    """Write the tokenizer files into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, out_dir / f.name)) for f in self.tokenizer_files]

  def items(self) -> tp.Iterator[tuple[str, np.ndarray]]:
    """Stream (name, array) pairs; each array is loaded only when reached."""
    for name in self.keys():
      yield name, self.get(name)

  def __contains__(self, name: str) -> bool:
    return name in self.aliases or name in set(self.keys())

  def __repr__(self) -> str:
    return f"{type(self).__name__}({str(self.path)!r}, kind_hint={self.kind_hint!r})"

  def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing
    """Release memory maps and loaded shards (a no-op where nothing is held)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _resolve(self, name: str) -> str:
    return self.aliases.get(name, name)

  def _missing(self, name: str) -> ConversionError:
    return ConversionError(f"{self.path}: no tensor named {name!r}")


# --- files ----------------------------------------------------------------------------------------

def read_bytes(path: Path, offset: int, nbytes: int, what: str) -> bytearray:
  """Read one tensor's bytes; a short read means the file was cut off."""
  buf = bytearray(nbytes)
  with open(path, "rb") as f:
    f.seek(offset)
    got = f.readinto(buf)
  if got != nbytes:
    raise ConversionError(f"{path}: {what}: file ends after {got} of {nbytes} bytes (truncated?)")
  return buf


def read_json(path: Path) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ConversionError(f"{path}: file not found") from None
  except (OSError, ValueError, RecursionError) as e:
    # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
    raise ConversionError(f"{path}: unreadable JSON: {e}") from None
  if not isinstance(data, dict):
    raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


# --- torch ----------------------------------------------------------------------------------------
# Shared because transformers folders (pytorch_model.bin), training checkpoints (.pth) and GGUF
# (dequantised through transformers) all end up as torch tensors.

def torch_load(path: Path, *, trust_pickle: bool) -> tp.Any:
  """`torch.load` on CPU, memory-mapped; arbitrary pickles only if the user trusts the file."""
  import pickle
  try:
    return _torch_load_mmap(path, weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights only" not in str(e).lower():
      raise _corrupt_torch(path, e) from None
    if not trust_pickle:
      raise ConversionError(
        f"{path}: holds Python objects that a weights-only load refuses ({_refusal_reason(e)}). If "
        "you trust this file, pass trust_pickle=True to unpickle it fully; "
        "unpickling can run arbitrary code.") from None
  try:
    return _torch_load_mmap(path, weights_only=False)
  except (pickle.UnpicklingError, AttributeError, ImportError) as e:
    raise _corrupt_torch(path, e) from None


def _refusal_reason(e: Exception) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  unsupported = [ln for ln in lines if "Unsupported global" in ln]
  return (unsupported or lines or [type(e).__name__])[0]


def _corrupt_torch(path: Path, e: Exception) -> ConversionError:
  return ConversionError(f"{path}: cannot read torch checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}")


def _torch_load_mmap(path: Path, *, weights_only: bool) -> tp.Any:
  import pickle

  import torch
  try:
    try:
      return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as e:
      if "mmap" not in str(e):
        raise
      # Pre-zipfile (legacy) torch.save files cannot be memory-mapped: load them whole.
      return torch.load(path, map_location="cpu", weights_only=weights_only)
  except pickle.UnpicklingError:
    raise  # the caller tells a refused pickle from a corrupt one
  except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.PickleError) as e:
    raise _corrupt_torch(path, e) from None


def torch_to_numpy(t) -> np.ndarray:
  """Copy a torch tensor into numpy bit-exactly, bf16/fp8 included (numpy has neither)."""
  import torch
  t = t.detach().cpu()
  reinterpret = {
    torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
    torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2),
  }
  if t.dtype in reinterpret:
    as_int, np_dtype = reinterpret[t.dtype]
    return np.array(t.contiguous().view(as_int).numpy().view(np_dtype), copy=True, order="C")
  return np.array(t.numpy(), copy=True, order="C")


def numpy_to_torch(a: np.ndarray):
  """The inverse of `torch_to_numpy`: a fresh contiguous torch tensor with the same bytes."""
  import torch
  a = np.ascontiguousarray(a)
  reinterpret = {
    np.dtype(ml_dtypes.bfloat16): (np.int16, torch.bfloat16),
    np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e5m2): (np.uint8, torch.float8_e5m2),
  }
  if a.dtype in reinterpret:
    as_int, torch_dtype = reinterpret[a.dtype]
    return torch.from_numpy(a.view(as_int).copy()).view(torch_dtype)
  return torch.from_numpy(a.copy())


def torch_dtype_to_numpy(dtype) -> np.dtype:
  import torch
  return torch_to_numpy(torch.empty(0, dtype=dtype)).dtype


def tensors_only(state: tp.Mapping) -> dict:
  import torch
  return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


class TorchDictSource(Source):
  """A Source over torch tensors already in memory (`self._tensors`: name → tensor)."""

  _tensors: dict

  def keys(self) -> list[str]:
    return list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensor(name).shape)

  def dtype(self, name: str) -> np.dtype:
    return torch_dtype_to_numpy(self._tensor(name).dtype)

  def get(self, name: str) -> np.ndarray:
    return torch_to_numpy(self._tensor(name))

  def close(self) -> None:
    self._tensors = {}

  def _tensor(self, name: str):
    try:
      return self._tensors[self._resolve(name)]
    except KeyError:
      raise self._missing(name) from None
