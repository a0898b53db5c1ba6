"""`--export-torch` of a whisper_llada checkpoint to the authors' Diffusion-ASR `.pth`: a byte-exact
round trip of their file, a model trained here loading into a torch reference of their model with
the same Q-Former and LoRA outputs, LoRA α from the stored config, and bad files named in full."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from support import convert_cli as run

import llada_jax
from llada_jax.convert.source import torch_to_numpy
from llada_jax.models import checkpoint, stacked
from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.testing.torch_diffusion_asr import TheirTrainedParts

ENTRIES = {"model", "optimizer", "scheduler", "config", "scaler", "epoch"}


@pytest.fixture(scope="module")
def bases(tiny_bases) -> tuple[Path, Path]:
  """Base Whisper (d 32) and LLaDA (d 32, kv 2 × 8) folders that the tiny .pth fits (conftest's
  session `tiny_bases`)."""
  return tiny_bases


def their_pth(path: Path, parts: TheirTrainedParts, *, config=True, edit=None) -> dict:
  """A .pth as their `save_checkpoint` writes it, with a few tensors stored in fp16/bf16."""
  state = parts.module.state_dict()
  lora_b = "llada.base_model.model.model.transformer.blocks.0.q_proj.lora_B.default.weight"
  state[lora_b] = state[lora_b].to(torch.bfloat16)
  state["linear_proj.bias"] = state["linear_proj.bias"].half()
  pos = "adapter.bert.embeddings.position_embeddings.weight"
  state[pos] = state[pos].half()
  if edit:
    edit(state)
  run_config = {"model": {"lora": True, "lora_rank": parts.rank, "lora_alpha": int(parts.alpha),
                          "lora_dropout": 0.05, "second_per_window": 0.333333,
                          "second_stride": 0.333333, "task_prompt": "Transcribe the audio:"},
                "run": {"seed": 42}}
  torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5}]},
              "scheduler": None, "config": run_config if config else None, "scaler": None,
              "epoch": 7}, path)
  return state


def convert(bases, pth: Path, out: Path, *extra) -> int:
  whisper, llada = bases
  return run("--kind", "whisper_llada", "--src", pth, "--whisper", whisper, "--llm", llada,
             "--out", out, "--qformer-heads", "4", *extra)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
  x, y = torch_to_numpy(a), torch_to_numpy(b)
  return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_their_pth_round_trip_is_byte_exact(bases, tmp_path):
  parts = TheirTrainedParts(alpha=16.0)
  original = their_pth(tmp_path / "theirs.pth", parts)
  assert convert(bases, tmp_path / "theirs.pth", tmp_path / "jx") == 0
  info = json.loads((tmp_path / "jx" / "source.json").read_text())
  assert info["lora"]["alpha"] == 16.0 and info["lora"]["alpha_from"] == "checkpoint config"
  assert info["lora"]["rank"] == 8 and info["lora"]["rank_from"] == "tensors"
  converted = llada_jax.load(tmp_path / "jx")
  assert converted.config.lm.lora.dropout == 0.05
  assert (tmp_path / "jx" / "source_extra.safetensors").is_file()

  assert run("--export-torch", "--src", tmp_path / "jx", "--out", tmp_path / "back.pth") == 0
  back = torch.load(tmp_path / "back.pth", weights_only=True)
  assert set(back) == ENTRIES and back["epoch"] == 7 and back["optimizer"] is None
  assert back["config"]["model"]["lora_alpha"] == 16 and back["config"]["run"] == {"seed": 42}
  assert list(back["model"]) == list(original)  # same keys, same order
  for name, tensor in original.items():
    assert same_bytes(back["model"][name], tensor), name
  # the BERT head's ties come back as ties (one storage, as in their file)
  model = back["model"]
  assert (model["adapter.cls.predictions.decoder.weight"].data_ptr()
          == model["adapter.bert.embeddings.word_embeddings.weight"].data_ptr())

  reference = TheirTrainedParts(alpha=16.0, seed=1)
  reference.module.load_state_dict(model, strict=True)
  frames = np.random.default_rng(0).standard_normal((2, 50, 32)).astype(np.float32)
  ours = converted.projector(jnp.asarray(frames))
  want = reference.audio_features(torch.from_numpy(frames), 17).numpy()
  assert ours.shape == want.shape == (2, 2 * 4, 32)
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-5, rtol=0)


def _trained_here(path: Path) -> WhisperLLaDA:
  """A tiny Whisper-LLaDA with random weights (LoRA B too), saved as train/export.py does; built
  from numpy so that no initializer compiles."""
  config = WhisperLLaDAConfig.tiny_test()
  rng = np.random.default_rng(3)
  items = []
  state = nnx.state(checkpoint.abstract_model(config), nnx.Not(checkpoint.RNG_STATE))
  flat = dict(nnx.to_flat_state(state))
  for name, (key, _) in stacked.per_layer_names(state).items():  # the names export writes
    var = flat[key]
    shape = stacked.layer_shape(var)
    if "norm" in name:
      value = rng.uniform(0.5, 1.5, shape)
    else:  # BLIP-2's std 0.02 keeps the Q-Former's activations tame
      value = rng.standard_normal(shape) * (0.1 if ".lora." in name else 0.02)
    items.append((name, value.astype(var.dtype)))
  checkpoint.save(path, config, items,
                  source_info={"format": "trained", "step": 10, "response_len": 64})
  return llada_jax.load(path)


def test_model_trained_here_loads_into_their_model(tmp_path):
  model = _trained_here(tmp_path / "run")
  assert run("--export-torch", "--src", tmp_path / "run", "--out", tmp_path / "x.safetensors") == 2
  assert run("--export-torch", "--src", tmp_path / "run", "--out", tmp_path / "x.pth") == 0
  ckpt = torch.load(tmp_path / "x.pth", weights_only=True)
  assert set(ckpt) == ENTRIES and ckpt["epoch"] == 0
  assert {k: ckpt["config"]["model"][k] for k in ("lora", "lora_rank", "lora_alpha")} == {
      "lora": True, "lora_rank": 4, "lora_alpha": 8}
  assert all(t.dtype == torch.float32 for t in ckpt["model"].values())

  c = model.config
  reference = TheirTrainedParts(hidden=c.qformer.hidden_size, layers=c.qformer.num_layers,
                                heads=c.qformer.num_heads,
                                intermediate=c.qformer.intermediate_size,
                                width=c.whisper.d_model, out_dim=c.lm.d_model,
                                lm_layers=c.lm.n_layers, lm_d=c.lm.d_model,
                                lm_kv=c.lm.n_kv_heads * c.lm.dim_per_head, rank=4, alpha=8.0)
  # strict over what their model has, less the BERT parts ours never had (their loader is
  # strict=False): nothing unexpected, nothing else missing
  result = reference.module.load_state_dict(ckpt["model"], strict=False)
  assert result.unexpected_keys == [] and sorted(result.missing_keys) == sorted(reference.unused)
  assert list(ckpt["model"]) == [n for n in reference.module.state_dict() if n in ckpt["model"]]

  frames = np.random.default_rng(1).standard_normal((2, 60, c.whisper.d_model))
  frames = frames.astype(np.float32)
  want = reference.audio_features(torch.from_numpy(frames), c.qformer.window_frames).numpy()
  np.testing.assert_allclose(np.asarray(model.projector(jnp.asarray(frames))), want, atol=1e-5,
                             rtol=0)
  x = np.random.default_rng(2).standard_normal((3, c.lm.d_model)).astype(np.float32)
  for layer in range(c.lm.n_layers):
    for proj in ("q_proj", "k_proj", "v_proj"):
      block = stacked.layer(model.lm.layers, layer)
      ours = getattr(block.self_attn, proj).lora(jnp.asarray(x))
      np.testing.assert_allclose(np.asarray(ours), reference.lora(layer, proj, torch.from_numpy(x)),
                                 atol=1e-5, rtol=0, err_msg=f"{layer} {proj}")


def test_lora_alpha_without_a_stored_config(bases, tmp_path, capsys):
  their_pth(tmp_path / "bare.pth", TheirTrainedParts(), config=False)
  assert convert(bases, tmp_path / "bare.pth", tmp_path / "a", "--lora-alpha", "24") == 0
  info = json.loads((tmp_path / "a" / "source.json").read_text())["lora"]
  assert (info["alpha"], info["alpha_from"]) == (24.0, "--lora-alpha")
  assert convert(bases, tmp_path / "bare.pth", tmp_path / "b") == 0
  info = json.loads((tmp_path / "b" / "source.json").read_text())["lora"]
  assert (info["alpha"], info["alpha_from"]) == (32.0, "default")

  their_pth(tmp_path / "cfg.pth", TheirTrainedParts(alpha=16.0))
  assert convert(bases, tmp_path / "cfg.pth", tmp_path / "c", "--lora-alpha", "24") == 2
  assert "lora_alpha 24.0 contradicts the stored config's lora_alpha 16" in (
      capsys.readouterr().err)
  assert not (tmp_path / "c").exists()


def test_missing_and_extra_keys_are_all_named(bases, tmp_path, capsys):
  gone = ["speech_query_tokens", "adapter.bert.encoder.layer.1.crossattention.self.key.bias",
          "llada.base_model.model.model.transformer.blocks.1.v_proj.lora_A.default.weight"]
  added = ["ln_speech.weight", "adapter.bert.encoder.layer.0.crossattention.self.extra"]

  def edit(state):
    for name in gone:
      del state[name]
    state.update({name: torch.ones(3) for name in added})

  their_pth(tmp_path / "bad.pth", TheirTrainedParts(), edit=edit)
  assert convert(bases, tmp_path / "bad.pth", tmp_path / "jx") == 2
  err = capsys.readouterr().err
  assert "5 problem(s)" in err
  for name in gone:
    assert f"missing tensor {name!r}" in err, name
  for name in added:
    assert f"unexpected tensor {name!r}" in err, name
  assert not (tmp_path / "jx").exists() and not list(tmp_path.glob(".jx.*"))
