"""The fuzz targets: every parser of user input, each with valid seeds built in-process (see
`llada_jax.testing.fuzz` for the contract and the mutations)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
from flax import nnx
from hypothesis import strategies as st

from llada_jax import config_files
from llada_jax.config_files import ConfigError
from llada_jax.convert import ConversionError, open_source
from llada_jax.data.audio import AudioError, audio_length, load_audio
from llada_jax.data.files import FilesError, FilesSource
from llada_jax.data.manifest import ManifestError, ManifestSource
from llada_jax.evaluation.inputs import EvalError, read_first_pass
from llada_jax.models import checkpoint, stacked
from llada_jax.models.checkpoint import CheckpointError
from llada_jax.models.config import LMConfig, WhisperLLaDAConfig
from llada_jax.testing.encode import encode_pcm16
from llada_jax.testing.fuzz import (
  INTERESTING_INTS,
  Case,
  Field,
  Target,
  apply_byte_ops,
  apply_json_ops,
  byte_ops,
  dump_json,
  json_ops,
  maybe,
  mutated_bytes,
  mutated_json,
)
from llada_jax.train.config import TrainConfig


def _tone(seconds: float = 0.05, rate: int = 16000, channels: int = 1) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  wave = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
  return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _file(folder: Path, case: Case) -> Path:
  return folder / case.files[0][0]


# -- audio ----------------------------------------------------------------------------------------

def _riff_fields(data: bytes) -> list[Field]:
  """The RIFF size, every chunk size and the fmt chunk's numbers of a wav file."""
  fields, at = [(4, 4, "little")], 12
  while at + 8 <= len(data):
    size = int.from_bytes(data[at + 4:at + 8], "little")
    fields.append((at + 4, 4, "little"))
    if data[at:at + 4] == b"fmt ":
      fields += [(at + 8 + o, w, "little") for o, w in ((0, 2), (2, 2), (4, 4), (8, 4), (12, 2),
                                                         (14, 2))]
    at += 8 + size + (size & 1)
  return fields


# STREAMINFO: block sizes, frame sizes, and rate / channels / bits / total samples packed in 8 bytes
_FLAC_FIELDS = [(8, 2, "big"), (10, 2, "big"), (12, 3, "big"), (15, 3, "big"), (18, 8, "big"),
                (21, 5, "big"), (5, 3, "big")]


def _audio_seeds(folder: Path, kinds: list[tuple[str, dict]]) -> list[tuple[str, bytes]]:
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for name, kw in kinds:
    path = folder / name
    channels = kw.pop("channels", 1)
    sf.write(path, _tone(channels=channels, rate=kw.get("samplerate", 16000)), **kw)
    out.append((name, path.read_bytes()))
  return out


def _audio_strategy(seeds: list[tuple[str, bytes]], exts: list[str]) -> st.SearchStrategy[Case]:
  def one(i: int) -> st.SearchStrategy[Case]:
    name, data = seeds[i]
    fields = _riff_fields(data) if name.endswith(".wav") else (
      _FLAC_FIELDS if name.endswith(".flac") else [])
    ext = st.one_of(st.just(Path(name).suffix), st.sampled_from(exts))
    return st.builds(lambda b, e: Case(((f"input{e}", b),)), mutated_bytes(data, fields), ext)
  return st.one_of([one(i) for i in range(len(seeds))])


def _parse_audio(folder: Path, case: Case) -> None:
  path = _file(folder, case)
  audio_length(path)
  load_audio(path)


def _audio_names(folder: Path, case: Case) -> list[str]:
  return [str(_file(folder, case))]


def _setup_sndfile(seeds: Path) -> st.SearchStrategy[Case]:
  files = _audio_seeds(seeds, [
    ("pcm16.wav", dict(samplerate=16000, subtype="PCM_16")),
    ("float-stereo.wav", dict(samplerate=8000, subtype="FLOAT", channels=2)),
    ("pcm24.flac", dict(samplerate=22050, subtype="PCM_24")),
    ("vorbis.ogg", dict(samplerate=16000, format="OGG", subtype="VORBIS")),
  ])
  return _audio_strategy(files, [".wav", ".flac", ".aiff"])


def _encode(path: Path, codec: str, container: str | None = None) -> None:
  rate = 16000
  encode_pcm16((_tone(0.2, rate) * 32767).astype(np.int16), rate, path, codec, container)


def _setup_pyav(seeds: Path) -> st.SearchStrategy[Case]:
  import av

  seeds.mkdir(parents=True, exist_ok=True)
  files = []
  for name, codec, container in (("aac.m4a", "aac", "mp4"), ("mp3.mp3", "libmp3lame", None),
                                 ("opus.webm", "libopus", "webm")):
    if codec in av.codecs_available:
      _encode(seeds / name, codec, container)
      files.append((name, (seeds / name).read_bytes()))
  return _audio_strategy(files, [".m4a", ".mp3", ".webm", ".aac"])


AUDIO_SNDFILE = Target(
  "audio_sndfile", "load_audio / audio_length on wav, flac, ogg (libsndfile)", _setup_sndfile,
  _parse_audio, (AudioError,), _audio_names)
AUDIO_PYAV = Target(
  "audio_pyav", "load_audio / audio_length on m4a, mp3, webm (PyAV, libsndfile first)",
  _setup_pyav, _parse_audio, (AudioError,), _audio_names, time_limit=4.0)


# -- path lists, Diffusion-ASR data files ---------------------------------------------------------

def _data_files(seeds: Path) -> tuple[list[str], list[str]]:
  """Two readable wav files, and paths that are not: a folder, garbage, an empty file, none."""
  seeds.mkdir(parents=True, exist_ok=True)
  good = []
  for i in range(2):
    sf.write(seeds / f"utt{i}.wav", _tone(), 16000, subtype="PCM_16")
    good.append(str(seeds / f"utt{i}.wav"))
  (seeds / "garbage.flac").write_bytes(b"fLaC\x00\x00\x00\x22" + b"\x01" * 40)
  (seeds / "empty.wav").write_bytes(b"")
  (seeds / "sub").mkdir(exist_ok=True)
  bad = [str(seeds / n) for n in ("garbage.flac", "empty.wav", "sub", "missing.wav")]
  return good, bad


def _setup_lists(seeds: Path) -> st.SearchStrategy[Case]:
  good, bad = _data_files(seeds)
  strings = good + bad
  text = "# a list\n" + "\n".join(good) + "\n\n" + good[0] + "\n"
  rows = [{"path": p, "text": "HELLO WORLD", "id": Path(p).stem, "hyp": "hello world"}
          for p in good]
  line_ops = st.lists(st.tuples(st.integers(0, 64), st.sampled_from(strings + ["#", "", " "])),
                      max_size=4)

  def text_case(ops, edits):
    lines = text.splitlines()
    for at, s in ops:
      lines.insert(at % (len(lines) + 1), s)
    return Case((("list.txt", apply_byte_ops("\n".join(lines).encode(), edits)),))

  def jsonl_case(ops):
    value, nests = apply_json_ops(rows, ops)
    lines = ([dump_json(r) for r in value] if isinstance(value, list) and not nests
             else [dump_json(value, nests)])
    return Case((("list.jsonl", b"\n".join(lines)),))

  return st.one_of(st.builds(text_case, line_ops, byte_ops()),
                   st.builds(jsonl_case, json_ops(strings, ["path", "text", "id", "hyp"])),
                   mutated_json(rows[0], strings).map(lambda b: Case((("list.jsonl", b),))))


def _parse_lists(folder: Path, case: Case) -> None:
  path = _file(folder, case)
  FilesSource(path).lengths()
  if path.suffix == ".jsonl":
    read_first_pass(path)


def _setup_manifest(seeds: Path) -> st.SearchStrategy[Case]:
  good, bad = _data_files(seeds)
  seed = {"annotation": [{"path": good[0], "text": "HELLO", "task": "asr"},
                         {"path": good[1], "text": "WORLD", "origin_transcripts": "word",
                          "expand_wav": []}]}
  keys = ["annotation", "path", "text", "origin_transcripts", "expand_wav", "task"]
  return mutated_json(seed, good + bad, keys).map(lambda b: Case((("data.json", b),)))


def _parse_manifest(folder: Path, case: Case) -> None:
  ManifestSource(_file(folder, case)).lengths()


PATH_LISTS = Target("path_lists", "FilesSource on .txt / .jsonl lists; read_first_pass",
                    _setup_lists, _parse_lists, (FilesError, EvalError), _audio_names)
MANIFEST = Target("manifest", "ManifestSource on Diffusion-ASR JSON data files", _setup_manifest,
                  _parse_manifest, (ManifestError,), _audio_names)


# -- run configs and --set ------------------------------------------------------------------------

def _train_config():
  return TrainConfig(model=WhisperLLaDAConfig.tiny_test())


def _dotted(data: dict, prefix: str = "") -> list[str]:
  out = []
  for k, v in data.items():
    out.append(prefix + k)
    if isinstance(v, dict):
      out += _dotted(v, f"{prefix}{k}.")
  return out


def _setup_config(seeds: Path) -> st.SearchStrategy[Case]:
  seeds.mkdir(parents=True, exist_ok=True)
  seed = config_files.to_dict(_train_config())
  keys = _dotted(seed)
  own = "cfg.json"  # "base" naming the file itself: a cycle
  values = st.one_of(st.sampled_from(["none", "null", "1,2,3", "(", "[[[[", "1e999", "nan", "-1",
                                      "true", "{}", "[]", '{"a": 1}', "", "é", "[" * 5000,
                                      "9" * 5000, "0x10"]),
                     st.text(max_size=12))
  override = st.builds(lambda k, eq, v: f"{k}{eq}{v}",
                       st.one_of(st.sampled_from(keys), st.text(max_size=8)),
                       st.sampled_from(["=", "=", ""]), values)
  return st.builds(
    lambda body, base, args: Case((("cfg.json", body if base is None else
                                    body[:-1] + f', "base": {json.dumps(base)}}}'.encode()),),
                                  tuple(args)),
    st.one_of(st.just(json.dumps(seed).encode()), mutated_json(seed, [own, "tiny"], keys)),
    st.one_of(st.none(), st.sampled_from([own, "tiny", "nope", "x.json"])),
    st.lists(override, max_size=3))


def _parse_config(folder: Path, case: Case) -> None:
  config_files.load(_file(folder, case), TrainConfig)
  config_files.override(_train_config(), case.args)


def _config_names(folder: Path, case: Case) -> list[str]:
  """A file's error names the file; an override's names its key (as written or as repr writes
  it), or the group above it (`model.whisper: WhisperConfig.dtype=…`), or the item without =."""
  out = [str(_file(folder, case))]
  for item in case.args:
    key = item.partition("=")[0].strip() or item
    out += [key, repr(key)[1:-1], repr(item)]
    if key.count(".") >= 2:
      out.append(key.rsplit(".", 1)[0])
  return out


CONFIG = Target("config", "config_files.load on a .json run config; override() with --set items",
                _setup_config, _parse_config, (ConfigError,), _config_names)


# -- converted checkpoints (config.json, the part index) -------------------------------------------

def _tiny_lm():
  return LMConfig.tiny_test(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, mlp_hidden=16,
                            vocab_size=32, mask_id=31, max_seq_len=16)


def _setup_checkpoint(seeds: Path) -> st.SearchStrategy[Case]:
  cfg = _tiny_lm()
  _, state = nnx.split(checkpoint.abstract_model(cfg))
  flat = dict(nnx.to_flat_state(state))
  names = {n: at for n, at in stacked.per_layer_names(state).items()
           if not checkpoint.RNG_STATE(at[0], flat[at[0]])}
  items = [(n, np.ones(stacked.layer_shape(flat[at[0]]), np.float32)) for n, at in names.items()]
  folder = seeds / "model"
  if folder.exists():
    shutil.rmtree(folder)
  checkpoint.save(folder, cfg, items, part_bytes=2048)  # several parts: the index has work to do
  config = json.loads((folder / "config.json").read_text())
  index = json.loads((folder / "params" / "index.json").read_text())
  cfg_keys = list(config) + ["kind", "lora"]
  return st.builds(
    lambda c, i, s: Case((("model/config.json", c), ("model/params/index.json", i),
                          ("model/source.json", s))),
    maybe(mutated_json(config, ["lm", "whisper", "float32"], cfg_keys),
          json.dumps(config).encode()),
    maybe(mutated_json(index, list(index["params"]), ["parts", "params", "part", "shape",
                                                        "dtype"]), json.dumps(index).encode()),
    maybe(mutated_json({"format": "hf", "config": {}}), b"{}"))


def _parse_checkpoint(folder: Path, case: Case) -> None:
  model = folder / "model"
  seed = folder.parent / "seeds" / "model" / "params"
  for part in seed.iterdir():  # the orbax parts (not mutated: orbax's own format)
    if part.is_dir() and not (model / "params" / part.name).exists():
      shutil.copytree(part, model / "params" / part.name)
  checkpoint.read_source_info(model)
  checkpoint.load(model)


def _checkpoint_names(folder: Path, case: Case) -> list[str]:
  return [str(folder / "model")]


CHECKPOINT = Target("checkpoint", "checkpoint.load on a converted folder: config.json, "
                    "params/index.json, source.json", _setup_checkpoint, _parse_checkpoint,
                    (CheckpointError, ConfigError),
                    _checkpoint_names)


# -- CTranslate2 model.bin ------------------------------------------------------------------------

def _ct2_variables(d: int = 8, vocab: int = 16, mels: int = 4, int8: bool = False) -> list:
  rng = np.random.default_rng(0)
  w = lambda *shape: rng.standard_normal(shape).astype(np.float16)  # noqa: E731
  out = [("encoder/conv1/weight", w(d, mels, 3)), ("encoder/conv1/bias", w(d)),
         ("encoder/conv2/weight", w(d, d, 3)), ("encoder/conv2/bias", w(d))]

  def norm(p):
    return [(f"{p}/gamma", w(d)), (f"{p}/beta", w(d))]

  def linear(p, rows, cols):
    return [(f"{p}/weight", w(rows, cols)), (f"{p}/bias", w(rows))]

  def block(p):
    return [*linear(f"{p}/self_attention/linear_0", 3 * d, d),
            *linear(f"{p}/self_attention/linear_1", d, d), *norm(f"{p}/self_attention/layer_norm")]

  def ffn(p):
    first = linear(f"{p}/ffn/linear_0", 2 * d, d)
    if int8:
      first = [(f"{p}/ffn/linear_0/weight", rng.integers(-127, 127, (2 * d, d), np.int8)),
               (f"{p}/ffn/linear_0/weight_scale", np.full(2 * d, 50.0, np.float32)), first[1]]
    return [*first, *linear(f"{p}/ffn/linear_1", d, 2 * d), *norm(f"{p}/ffn/layer_norm")]

  out += [*block("encoder/layer_0"), *ffn("encoder/layer_0"), *norm("encoder/layer_norm")]
  out += [("decoder/embeddings/weight", w(vocab, d)),
          ("decoder/position_encodings/encodings", w(16, d)),
          *block("decoder/layer_0"), *linear("decoder/layer_0/attention/linear_0", d, d),
          *linear("decoder/layer_0/attention/linear_1", 2 * d, d),
          *linear("decoder/layer_0/attention/linear_2", d, d),
          *norm("decoder/layer_0/attention/layer_norm"), *ffn("decoder/layer_0"),
          *norm("decoder/layer_norm"),
          ("encoder/num_heads", np.array(2, np.int16)),
          ("decoder/num_heads", np.array(2, np.int16)),
          ("decoder/activation", np.array(3, np.int8))]
  return out


_CT2_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
                  np.dtype(np.int32): 3, np.dtype(np.float16): 4}


def write_ct2(variables: list, aliases: dict[str, str], version: int = 6
              ) -> tuple[bytes, list[Field]]:
  """model.bin bytes in the layout `convert.ctranslate2` reads, and its numeric fields."""
  out, fields = bytearray(), []

  def num(fmt: str, value) -> None:
    fields.append((len(out), struct.calcsize(fmt), "little"))
    out.extend(struct.pack("<" + fmt, value))

  def string(s: str) -> None:
    raw = s.encode() + b"\0"
    num("H", len(raw))
    out.extend(raw)

  num("I", version)
  string("WhisperSpec")
  num("I", 1)
  num("I", len(variables))
  for name, a in variables:
    string(name)
    num("B", a.ndim)
    for dim in a.shape:
      num("I", dim)
    num("B", _CT2_DTYPE_IDS[a.dtype])
    num("I", a.nbytes)
    out.extend(a.tobytes())
  num("I", len(aliases))
  for alias, target in aliases.items():
    string(alias)
    string(target)
  return bytes(out), fields


def _setup_ct2(seeds: Path) -> st.SearchStrategy[Case]:
  aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
  bins = [write_ct2(_ct2_variables(int8=q), aliases) for q in (False, True)]
  config = {"suppress_ids": [1, 2], "suppress_ids_begin": [3], "lang_ids": []}
  tokenizer = {"added_tokens": [{"id": 14, "content": "<|endoftext|>"},
                                {"id": 15, "content": "<|startoftranscript|>"}]}
  return st.builds(
    lambda b, c, t: Case((("ct2/model.bin", b), ("ct2/config.json", c),
                          ("ct2/tokenizer.json", t))),
    st.one_of([mutated_bytes(data, fields) for data, fields in bins]),
    maybe(mutated_json(config), json.dumps(config).encode()),
    maybe(mutated_json(tokenizer, keys=["id", "content"]), json.dumps(tokenizer).encode()))


def _parse_source(folder: Path, case: Case) -> None:
  with open_source(folder / Path(case.files[0][0]).parts[0]) as src:
    for name in src.keys():
      src.shape(name)
      src.dtype(name)
      src.get(name)
    for name in src.aliases:
      src.get(name)


def _source_names(folder: Path, case: Case) -> list[str]:
  return [str(folder / Path(case.files[0][0]).parts[0])]


CT2 = Target("ct2", "open_source on a CTranslate2 Whisper folder: model.bin, config.json, "
             "tokenizer.json", _setup_ct2, _parse_source, (ConversionError,), _source_names)


# -- safetensors (transformers folders) -----------------------------------------------------------

def _safetensors_parts(tensors: dict) -> tuple[dict, bytes]:
  from safetensors.numpy import save
  raw = save(tensors)
  n = int.from_bytes(raw[:8], "little")
  return json.loads(raw[8:8 + n]), raw[8 + n:]


def _setup_safetensors(seeds: Path) -> st.SearchStrategy[Case]:
  rng = np.random.default_rng(0)
  tensors = {"model.embed_tokens.weight": rng.standard_normal((4, 3)).astype(np.float32),
             "model.norm.weight": np.ones(3, np.float16), "lm_head.bias": np.arange(4)}
  header, data = _safetensors_parts(tensors)
  config = json.dumps({"model_type": "llama"}).encode()
  keys = ["dtype", "shape", "data_offsets", "__metadata__"]

  def single(h: bytes, length_op, data_ops) -> Case:
    body = apply_byte_ops(len(h).to_bytes(8, "little") + h + data, data_ops)
    if length_op is not None:
      body = length_op.to_bytes(8, "little") + body[8:]
    return Case((("hf/config.json", config), ("hf/model.safetensors", body)))

  half = {k: tensors[k] for k in list(tensors)[:2]}, {k: tensors[k] for k in list(tensors)[2:]}
  shards = [_safetensors_parts(t) for t in half]
  files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
  index = {"metadata": {}, "weight_map": {k: files[i] for i in range(2) for k in half[i]}}

  def sharded(index_bytes: bytes, h0: bytes) -> Case:
    first = len(h0).to_bytes(8, "little") + h0 + shards[0][1]
    second = (len(json.dumps(shards[1][0])).to_bytes(8, "little")
              + json.dumps(shards[1][0]).encode() + shards[1][1])
    return Case((("hf/config.json", config), ("hf/model.safetensors.index.json", index_bytes),
                 (f"hf/{files[0]}", first), (f"hf/{files[1]}", second)))

  return st.one_of(
    st.builds(single, maybe(mutated_json(header, list(tensors), keys), json.dumps(header).encode()),
              st.one_of(st.none(), st.sampled_from(INTERESTING_INTS)), byte_ops()),
    st.builds(sharded, maybe(mutated_json(index, files + ["../config.json", "/", ""],
                                          ["weight_map"]), json.dumps(index).encode()),
              maybe(mutated_json(shards[0][0], list(half[0]), keys),
                    json.dumps(shards[0][0]).encode())))


SAFETENSORS = Target("safetensors", "open_source on a transformers folder: model.safetensors "
                     "headers, the shard index", _setup_safetensors, _parse_source,
                     (ConversionError,), _source_names)


# -- GGUF -----------------------------------------------------------------------------------------

def write_gguf(path: Path) -> None:
  """A one-layer LLaMA with a byte-pair tokenizer that transformers loads from GGUF."""
  import gguf

  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(1)
  w.add_context_length(16)
  w.add_embedding_length(8)
  w.add_feed_forward_length(16)
  w.add_head_count(2)
  w.add_head_count_kv(1)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(10000.0)
  w.add_vocab_size(8)
  w.add_tokenizer_model("gpt2")
  w.add_token_list([b"a", b"b", b"c", b"d", b"<s>", b"</s>", b"ab", b"cd"])
  w.add_token_types([1] * 8)
  w.add_token_merges(["a b", "c d"])
  w.add_bos_token_id(4)
  w.add_eos_token_id(5)
  rng = np.random.default_rng(0)
  for name, shape in (("token_embd.weight", (8, 8)), ("output_norm.weight", (8,)),
                      ("blk.0.attn_norm.weight", (8,)), ("blk.0.attn_q.weight", (8, 8)),
                      ("blk.0.attn_k.weight", (4, 8)), ("blk.0.attn_v.weight", (4, 8)),
                      ("blk.0.attn_output.weight", (8, 8)), ("blk.0.ffn_norm.weight", (8,)),
                      ("blk.0.ffn_gate.weight", (16, 8)), ("blk.0.ffn_up.weight", (16, 8)),
                      ("blk.0.ffn_down.weight", (8, 16))):
    w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _setup_gguf(seeds: Path) -> st.SearchStrategy[Case]:
  seeds.mkdir(parents=True, exist_ok=True)
  write_gguf(seeds / "tiny.gguf")
  data = (seeds / "tiny.gguf").read_bytes()
  fields = [(4, 4, "little"), (8, 8, "little"), (16, 8, "little"), (24, 8, "little")]
  return mutated_bytes(data, fields).map(lambda b: Case((("m/model.gguf", b),)))


def _parse_gguf(folder: Path, case: Case) -> None:
  with open_source(_file(folder, case)) as src:
    for name in src.keys():
      src.get(name)


GGUF = Target("gguf", "open_source on a .gguf file (header checked, then transformers)",
              _setup_gguf, _parse_gguf, (ConversionError,), _audio_names, time_limit=4.0)


TARGETS = {t.name: t for t in (AUDIO_SNDFILE, AUDIO_PYAV, PATH_LISTS, MANIFEST, CONFIG, CHECKPOINT,
                               CT2, SAFETENSORS, GGUF)}
