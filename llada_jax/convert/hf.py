"""Transformers-style checkpoint folders, the GSAI-ML LLaDA layout among them.

A directory with config.json and model.safetensors or pytorch_model.bin, single or sharded
(model.safetensors.index.json / pytorch_model.bin.index.json). config.json names the model:

  kind_hint    config.json
  llada        model_type "llada", or LLaDA's own fields (d_model, n_layers, mlp_hidden_size)
  hf_whisper   model_type "whisper"
  hf_llama     model_type "llama", "smollm" or "smollm2"
  hf_<type>    any other model_type
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing as tp
from pathlib import Path

import ml_dtypes
import numpy as np

from llada_jax.convert.source import (
  ConversionError,
  Source,
  read_bytes,
  read_json,
  tensors_only,
  torch_dtype_to_numpy,
  torch_load,
  torch_to_numpy,
)

_LLAMA_MODEL_TYPES = ("llama", "smollm", "smollm2")
_LLADA_FIELDS = ("d_model", "n_layers", "mlp_hidden_size")


# --- safetensors ----------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
  "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
  "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
  "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _Entry:
  shape: tuple[int, ...]
  dtype: np.dtype
  offset: int  # absolute byte offset in the file
  nbytes: int


class _SafetensorsFile:
  """One .safetensors file: its header is parsed up front, tensor bytes are read on demand.

  Reads go through the header's byte offsets rather than `safe_open(framework='numpy')`, because
  numpy has no bfloat16 and safetensors' numpy path rejects it; one read path for every dtype keeps
  bf16 (LLaDA's weights) exactly as stored. `safe_open` still vets the file when it is opened.
  """

  def __init__(self, path: Path):
    self.path = path
    _vet_with_safetensors(path)
    self.entries = _parse_safetensors_header(path)

  def read(self, name: str) -> np.ndarray:
    e = self.entries[name]
    buf = read_bytes(self.path, e.offset, e.nbytes, f"tensor {name!r}")
    return np.frombuffer(buf, dtype=e.dtype).reshape(e.shape)


def _vet_with_safetensors(path: Path) -> None:
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(str(path), framework="numpy"):
      pass
  except (SafetensorError, OSError) as e:
    raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                          f"{e}") from None


def _parse_safetensors_header(path: Path) -> dict[str, _Entry]:
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= size - 8:
      raise ConversionError(f"{path}: corrupt safetensors header length ({n}, file is {size} "
                            "bytes)")
    try:
      header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:
      # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
      raise ConversionError(f"{path}: corrupt safetensors header: {e}") from None
  if not isinstance(header, dict):
    raise ConversionError(f"{path}: corrupt safetensors header: not a JSON object")
  base = 8 + n
  entries = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise ConversionError(f"{path}: tensor {name!r}: unreadable header entry {info!r}") from None
    nbytes = dtype.itemsize * math.prod(shape)
    if end - begin != nbytes or base + end > size:
      raise ConversionError(f"{path}: tensor {name!r}: byte range {begin}..{end} does not fit its "
                            f"shape {shape} {dtype} or the file ({size} bytes): truncated or "
                            "corrupt")
    entries[name] = _Entry(shape, dtype, base + begin, nbytes)
  return entries


# --- folders --------------------------------------------------------------------------------------

_WEIGHTS = (  # (file, is_index, format), in order of preference
  ("model.safetensors.index.json", True, "safetensors"),
  ("model.safetensors", False, "safetensors"),
  ("pytorch_model.bin.index.json", True, "torch"),
  ("pytorch_model.bin", False, "torch"),
)
# Weight files a user may point at instead of their folder.
WEIGHT_FILES = tuple(n for n, _, _ in _WEIGHTS)


def hf_kind_hint(config: dict, where: Path) -> str:
  model_type = str(config.get("model_type", "")).lower()
  if model_type == "llada" or all(f in config for f in _LLADA_FIELDS):
    return "llada"
  if model_type == "whisper":
    return "hf_whisper"
  if model_type in _LLAMA_MODEL_TYPES:
    return "hf_llama"
  if model_type:
    return f"hf_{model_type}"
  raise ConversionError(f"{where}: config has no model_type and no LLaDA fields {_LLADA_FIELDS}; "
                        "cannot tell which model this is")


class HFSource(Source):
  """A transformers-style (or LLaDA) checkpoint directory: safetensors or torch .bin, sharded or
  not."""

  def __init__(self, directory: Path, *, trust_pickle: bool = False):
    self.path = directory
    self.config = read_json(directory / "config.json")
    self.kind_hint = hf_kind_hint(self.config, directory / "config.json")
    self.aliases = {}
    self._trust_pickle = trust_pickle
    self._format, files, index = self._locate_weights()
    self.metadata = {"format": self._format, "files": [f.name for f in files]}
    self._safetensors = ({f: _SafetensorsFile(f) for f in files}
                         if self._format == "safetensors" else {})
    self._torch_file: Path | None = None  # the one torch shard held (memory-mapped) at a time
    self._torch_state: dict = {}
    # tensor -> file. A single pytorch_model.bin names its tensors only once loaded: None till then.
    self._where: dict[str, Path] | None = None
    if index is not None:
      self._where = {name: directory / f for name, f in index.items()}
    elif self._format == "safetensors":
      self._where = dict.fromkeys(self._safetensors[files[0]].entries, files[0])
    self._single_file = files[0]
    if self._safetensors:
      self._check_index_against_headers()

  def _locate_weights(self) -> tuple[str, list[Path], dict[str, str] | None]:
    for name, is_index, fmt in _WEIGHTS:
      path = self.path / name
      if not path.is_file():
        continue
      if not is_index:
        return fmt, [path], None
      index = self._read_index(path)
      return fmt, sorted({self.path / f for f in index.values()}), index
    raise ConversionError(f"{self.path}: config.json but no weights: expected one of "
                          f"{[n for n, _, _ in _WEIGHTS]}")

  def _read_index(self, path: Path) -> dict[str, str]:
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ConversionError(f"{path}: no 'weight_map' in the index")
    bad = [(k, f) for k, f in weight_map.items() if not isinstance(f, str) or not f.strip()]
    if bad:
      raise ConversionError(f"{path}: 'weight_map' places {bad[0][0]!r} in {bad[0][1]!r}, not a "
                            "file name")
    by_file: dict[str, int] = {}
    for f in weight_map.values():
      by_file[f] = by_file.get(f, 0) + 1
    for f, count in by_file.items():
      # os.path.isfile, not Path.is_file: a name too long for the file system is False, not OSError
      if not os.path.isfile(self.path / f):
        raise ConversionError(f"{path}: names shard {f!r} ({count} tensors), which is missing from "
                              f"{self.path}")
    return weight_map

  def _check_index_against_headers(self) -> None:
    # Headers are already parsed, so a stale index fails here rather than mid-conversion.
    for name, path in self._where.items():
      if name not in self._safetensors[path].entries:
        raise ConversionError(f"{path}: has no tensor {name!r}, which the index places there")

  def keys(self) -> list[str]:
    return list(self._tensor_files())

  def shape(self, name: str) -> tuple[int, ...]:
    if self._format == "safetensors":
      return self._entry(name).shape
    return tuple(self._torch_tensor(name).shape)

  def dtype(self, name: str) -> np.dtype:
    if self._format == "safetensors":
      return self._entry(name).dtype
    return torch_dtype_to_numpy(self._torch_tensor(name).dtype)

  def get(self, name: str) -> np.ndarray:
    if self._format == "safetensors":
      name, path = self._locate(name)
      return self._safetensors[path].read(name)
    return torch_to_numpy(self._torch_tensor(name))

  def close(self) -> None:
    self._torch_file, self._torch_state = None, {}

  def _tensor_files(self) -> dict[str, Path]:
    if self._where is None:
      self._where = dict.fromkeys(self._load_torch(self._single_file), self._single_file)
    return self._where

  def _locate(self, name: str) -> tuple[str, Path]:
    name = self._resolve(name)
    path = self._tensor_files().get(name)
    if path is None:
      raise self._missing(name)
    return name, path

  def _entry(self, name: str) -> _Entry:
    name, path = self._locate(name)
    return self._safetensors[path].entries[name]

  def _torch_tensor(self, name: str):
    name, path = self._locate(name)
    state = self._load_torch(path)
    if name not in state:
      raise ConversionError(f"{path}: has no tensor {name!r}, which the index places there")
    return state[name]

  def _load_torch(self, path: Path) -> dict:
    # Keep one shard mapped: readers walk tensors roughly in shard order, and a mapped shard costs
    # address space, not memory.
    if self._torch_file != path:
      self._torch_state = {}
      state = torch_load(path, trust_pickle=self._trust_pickle)
      if not isinstance(state, tp.Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
      self._torch_file, self._torch_state = path, tensors_only(state)
    return self._torch_state
