"""Source side of checkpoint conversion: stream tensors out of the checkpoints users bring.

A `Source` lists a checkpoint's tensors under the source's own names and loads them one at a time as
numpy arrays, so converting a 16 GB LLaDA never holds more than one tensor in memory (plus, for torch
`.bin` shards, one memory-mapped shard). `open_source(path)` tells the formats apart:

  kind_hint                    what `path` is
  hf_whisper, hf_llama, llada  a directory with config.json and model.safetensors or pytorch_model.bin,
  (hf_<model_type> otherwise)  single or sharded (model.safetensors.index.json /
                               pytorch_model.bin.index.json)
  ct2_whisper                  a CTranslate2 Whisper directory (model.bin + config.json + tokenizer.json);
                               its tensors are renamed to transformers' Whisper names (ctranslate2.py)
  gguf_llama                   a .gguf file, or a directory holding exactly one. Dequantised through
                               transformers and torch, so it is NOT streamed: the whole model sits in
                               memory as float32 (fine for small models such as SmolLM2-135M)
  diffusion_asr                a Diffusion-ASR training checkpoint (.pth/.pt) whose "model" entry holds
                               the trained tensors ("torch_state_dict" if the names do not look like it)

Names are the source's own except for CTranslate2, whose fused, slash-separated names would only make
every mapper re-implement the split. Tied tensors that a format stores once are listed in `aliases`
(alias -> stored name), not in `keys()`; `get` accepts either name.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
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

_LLAMA_MODEL_TYPES = ("llama", "smollm", "smollm2")
_LLADA_FIELDS = ("d_model", "n_layers", "mlp_hidden_size")
_DIFFUSION_ASR_PREFIXES = ("speech_query_tokens", "adapter.", "linear_proj.", "llada.")


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

  def close(self) -> None:
    """Release memory maps and loaded shards (a no-op where nothing is held)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _resolve(self, name: str) -> str:
    return self.aliases.get(name, name)

  def _missing(self, name: str) -> ConversionError:
    return ConversionError(f"{self.path}: no tensor named {name!r}")


# --- safetensors ------------------------------------------------------------------------------------

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


def read_bytes(path: Path, offset: int, nbytes: int, what: str) -> bytearray:
  """Read one tensor's bytes; a short read means the file was cut off."""
  buf = bytearray(nbytes)
  with open(path, "rb") as f:
    f.seek(offset)
    got = f.readinto(buf)
  if got != nbytes:
    raise ConversionError(f"{path}: {what}: file ends after {got} of {nbytes} bytes (truncated?)")
  return buf


class _SafetensorsFile:
  """One .safetensors file: its header is parsed up front, tensor bytes are read on demand.

  Reads go through the header's byte offsets rather than `safe_open(framework='numpy')`, because numpy
  has no bfloat16 and safetensors' numpy path rejects it; one read path for every dtype keeps bf16
  (LLaDA's weights) exactly as stored. `safe_open` still vets the file when it is opened.
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
    raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _parse_safetensors_header(path: Path) -> dict[str, _Entry]:
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= size - 8:
      raise ConversionError(f"{path}: corrupt safetensors header length ({n}, file is {size} bytes)")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ConversionError(f"{path}: corrupt safetensors header: {e}") from None
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
                            f"shape {shape} {dtype} or the file ({size} bytes): truncated or corrupt")
    entries[name] = _Entry(shape, dtype, base + begin, nbytes)
  return entries


# --- torch pickles ------------------------------------------------------------------------------------

def torch_load(path: Path, *, trust_pickle: bool) -> tp.Any:
  """`torch.load` on CPU, memory-mapped, refusing arbitrary pickles unless the user trusts the file."""
  import pickle
  try:
    return _torch_load_mmap(path, weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights only" not in str(e).lower():
      raise _corrupt_torch(path, e) from None
    if not trust_pickle:
      raise ConversionError(
        f"{path}: holds Python objects that a weights-only load refuses ({_refusal_reason(e)}). If "
        "you trust this file, pass --trust-pickle (trust_pickle=True) to unpickle it fully; "
        "unpickling can run arbitrary code.") from None
  try:
    return _torch_load_mmap(path, weights_only=False)
  except (pickle.UnpicklingError, AttributeError, ImportError) as e:
    raise _corrupt_torch(path, e) from None


def _refusal_reason(e: Exception) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  unsupported = [l for l in lines if "Unsupported global" in l]
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


def torch_dtype_to_numpy(dtype) -> np.dtype:
  import torch
  return torch_to_numpy(torch.empty(0, dtype=dtype)).dtype


def _tensors_only(state: tp.Mapping) -> dict:
  import torch
  return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# --- transformers / LLaDA directories -----------------------------------------------------------------

_HF_WEIGHTS = (  # (file, is_index, format), in order of preference
  ("model.safetensors.index.json", True, "safetensors"),
  ("model.safetensors", False, "safetensors"),
  ("pytorch_model.bin.index.json", True, "torch"),
  ("pytorch_model.bin", False, "torch"),
)


def read_json(path: Path) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ConversionError(f"{path}: file not found") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path}: unreadable JSON: {e}") from None
  if not isinstance(data, dict):
    raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


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
  """A transformers-style (or LLaDA) checkpoint directory, safetensors or torch .bin, sharded or not."""

  def __init__(self, directory: Path, *, trust_pickle: bool = False):
    self.path = directory
    self.config = read_json(directory / "config.json")
    self.kind_hint = hf_kind_hint(self.config, directory / "config.json")
    self.aliases = {}
    self._trust_pickle = trust_pickle
    self._format, files, index = self._locate_weights()
    self.metadata = {"format": self._format, "files": [f.name for f in files]}
    self._safetensors = {f: _SafetensorsFile(f) for f in files} if self._format == "safetensors" else {}
    self._torch_file: Path | None = None  # the one torch shard held (memory-mapped) at a time
    self._torch_state: dict = {}
    # tensor -> file. A single pytorch_model.bin names its tensors only once loaded: None until then.
    self._where: dict[str, Path] | None = None
    if index is not None:
      self._where = {name: directory / f for name, f in index.items()}
    elif self._format == "safetensors":
      self._where = dict.fromkeys(self._safetensors[files[0]].entries, files[0])
    self._single_file = files[0]
    if self._safetensors:
      self._check_index_against_headers()

  def _locate_weights(self) -> tuple[str, list[Path], dict[str, str] | None]:
    for name, is_index, fmt in _HF_WEIGHTS:
      path = self.path / name
      if not path.is_file():
        continue
      if not is_index:
        return fmt, [path], None
      index = self._read_index(path)
      return fmt, sorted({self.path / f for f in index.values()}), index
    raise ConversionError(f"{self.path}: config.json but no weights: expected one of "
                          f"{[n for n, _, _ in _HF_WEIGHTS]}")

  def _read_index(self, path: Path) -> dict[str, str]:
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ConversionError(f"{path}: no 'weight_map' in the index")
    by_file: dict[str, int] = {}
    for f in weight_map.values():
      by_file[f] = by_file.get(f, 0) + 1
    for f, count in by_file.items():
      if not (self.path / f).is_file():
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
      self._torch_file, self._torch_state = path, _tensors_only(state)
    return self._torch_state


# --- torch training checkpoints (Diffusion-ASR) ----------------------------------------------------------

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


class _TorchDictSource(Source):
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


class TorchCheckpointSource(_TorchDictSource):
  """A torch training checkpoint: the tensors of its "model" entry (or of the file if it is a bare
  state dict), memory-mapped. Optimizer state and the rest are dropped; "config" becomes `config`."""

  def __init__(self, path: Path, *, trust_pickle: bool = False):
    self.path = path
    ckpt = torch_load(path, trust_pickle=trust_pickle)
    if not isinstance(ckpt, tp.Mapping):
      raise ConversionError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("model"), tp.Mapping):
      self._tensors = _tensors_only(ckpt["model"])
      self.config = _plain_dict(ckpt.get("config"))
      self.metadata = {"entries": sorted(map(str, ckpt)), "epoch": ckpt.get("epoch")}
    elif ckpt and len(_tensors_only(ckpt)) == len(ckpt):
      self._tensors, self.config, self.metadata = dict(ckpt), {}, {"entries": ["<state dict>"]}
    else:
      raise ConversionError(f"{path}: no 'model' state dict in this checkpoint (entries: "
                            f"{sorted(map(str, ckpt))[:20]})")
    if not self._tensors:
      raise ConversionError(f"{path}: the checkpoint's state dict holds no tensors")
    looks_like_ours = any(k.startswith(_DIFFUSION_ASR_PREFIXES) for k in self._tensors)
    self.kind_hint = "diffusion_asr" if looks_like_ours else "torch_state_dict"
    self.aliases = {}



# --- GGUF -------------------------------------------------------------------------------------------------

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


class GGUFSource(_TorchDictSource):
  """A .gguf file, dequantised to float32 by transformers (through torch): held whole in memory, not
  streamed, so only for small models. Names are transformers' (LLaMA: model.layers.{i}.self_attn...)."""

  def __init__(self, path: Path):
    import torch
    from transformers import AutoModelForCausalLM
    self.path = path
    try:
      model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
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



# --- detection ----------------------------------------------------------------------------------------------

_TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
# Files a user may point at instead of their checkpoint directory.
_DIRECTORY_MEMBERS = ("config.json", "model.bin") + tuple(n for n, _, _ in _HF_WEIGHTS)


def open_source(path: str | Path, *, trust_pickle: bool = False) -> Source:
  """Open a checkpoint of any supported format (see the module docstring) as a `Source`.

  `trust_pickle` allows full unpickling of torch files that a weights-only load refuses; only for
  files from someone you trust, since unpickling can run arbitrary code.
  """
  path = Path(path).expanduser()
  if not path.exists():
    raise ConversionError(f"{path}: no such file or directory")
  if path.is_file():
    suffix = path.suffix.lower()
    if suffix == ".gguf":
      return GGUFSource(path)
    if suffix in _TORCH_CHECKPOINT_SUFFIXES:
      return TorchCheckpointSource(path, trust_pickle=trust_pickle)
    if path.name not in _DIRECTORY_MEMBERS:
      raise ConversionError(f"{path}: unknown checkpoint file: expected a directory, a .gguf file or "
                            f"a torch checkpoint ({', '.join(_TORCH_CHECKPOINT_SUFFIXES)})")
    path = path.parent
  return _open_directory(path, trust_pickle=trust_pickle)


def _open_directory(directory: Path, *, trust_pickle: bool) -> Source:
  has_config = (directory / "config.json").is_file()
  # CTranslate2 names its weights model.bin; transformers never does (pytorch_model.bin).
  if has_config and (directory / "model.bin").is_file():
    from llada_jax.convert.ctranslate2 import CT2WhisperSource
    return CT2WhisperSource(directory)
  if has_config:
    return HFSource(directory, trust_pickle=trust_pickle)
  ggufs = sorted(directory.glob("*.gguf"))
  if len(ggufs) == 1:
    return GGUFSource(ggufs[0])
  found = sorted(p.name for p in directory.iterdir())[:20]
  raise ConversionError(
    f"{directory}: unknown checkpoint layout: expected config.json with model.safetensors[.index.json] "
    "or pytorch_model.bin[.index.json] (transformers / LLaDA), config.json with model.bin "
    f"(CTranslate2 Whisper), or exactly one .gguf file; found {found}")
