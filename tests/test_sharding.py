"""Sharding rule sets: presets per collection, indivisible weights as errors, and the compiled LoRA
train step under `lora_dp` gathering no frozen weight (while `full_fsdp` does) at the same loss."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from llada_jax.config_files import ConfigError
from llada_jax.models import features, stacked
from llada_jax.models.config import LMConfig, WhisperConfig, WhisperLLaDAConfig
from llada_jax.models.transformer import Transformer
from llada_jax.models.whisper import Whisper
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import hlo, sharding
from llada_jax.train import config as config_lib
from llada_jax.train.step import Trainer

PROMPT_LEN = 5


def abstract_state(make):
  return nnx.state(nnx.eval_shape(make))


def test_presets_by_name():
  assert sharding.preset("full_fsdp") == sharding.ShardingConfig.full_fsdp()
  with pytest.raises(ValueError, match="'fsdp_tp'"):  # the old name is gone
    sharding.preset("fsdp_tp")
  assert sharding.preset_name(sharding.preset("lora_dp")) == "lora_dp"
  with pytest.raises(ValueError, match="'zero3'.*lora_dp"):
    sharding.preset("zero3")
  with pytest.raises(ConfigError, match="sharding='zero3'"):
    dataclasses.replace(config_lib.load("tiny"), sharding="zero3")


def test_inference_placement_takes_the_presets_by_name():
  from llada_jax.parallel.placement import Placement, PlacementError

  assert Placement.create((2, 2, 2), "lora_dp").info()["rules"] == "lora_dp"
  assert Placement.create((2, 2, 2), "full_fsdp").info()["rules"] == "full_fsdp"
  with pytest.raises(PlacementError, match="'zero3'"):
    Placement.create((2, 2, 2), "zero3")


def test_lora_dp_places_each_collection_by_its_rules():
  mesh = sharding.make_mesh((2, 2, 2))
  rules = sharding.preset("lora_dp")
  state = abstract_state(lambda: WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(0)))
  q = state.lm.layers.self_attn.q_proj  # stacked: [layers, ...], the layer axis never split

  def spec(variable, collection):
    leaf = sharding.state_shardings(nnx.State({"x": variable}), mesh, rules, collection)["x"]
    return leaf.get_value().spec

  assert spec(q.kernel, "frozen") == PartitionSpec(None, None, "tensor")
  assert spec(q.lora.a, "trained") == PartitionSpec(None, None, None)
  assert spec(q.lora.a, "optimizer") == PartitionSpec(None, ("data", "fsdp"), None)
  assert spec(q.lora.b, "optimizer") == PartitionSpec(None, None, "tensor")
  full = sharding.preset("full_fsdp")
  assert spec(q.kernel, "frozen") != sharding.state_shardings(
      nnx.State({"x": q.kernel}), mesh, full)["x"].get_value().spec


def test_indivisible_weight_is_an_error_naming_it():
  mesh = sharding.make_mesh((1, 1, 8))
  lm = abstract_state(lambda: Transformer(LMConfig.tiny_test(n_kv_heads=1), rngs=nnx.Rngs(0)))
  with pytest.raises(sharding.ShardingError,
                     match=r"^layers/self_attn/k_proj/kernel: dim 2 \('kv_heads', size 12\) of "
                           r"shape \(2, 48, 12\) is not divisible by mesh axes tensor=8"):
    sharding.state_shardings(lm, mesh, sharding.preset("full_fsdp"))

  # Whisper's odd vocabulary stays whole by the presets' explicit allow-list entry, and only by it.
  whisper = abstract_state(lambda: Whisper(WhisperConfig.tiny_test(), rngs=nnx.Rngs(0)))
  rules = sharding.preset("full_fsdp")
  placed = sharding.state_shardings(whisper, mesh, rules)
  assert placed.decoder.embed_tokens.embedding.get_value().spec == PartitionSpec(None, "fsdp")
  assert placed.decoder.layers[0].fc1.kernel.get_value().spec == PartitionSpec("fsdp", "tensor")
  with pytest.raises(sharding.ShardingError,
                     match=r"decoder/embed_tokens/embedding: dim 0 \('vocab', size 300\)"):
    sharding.state_shardings(whisper, mesh, dataclasses.replace(rules, replicate=()))


# ---------------------------------------------------------------------------------------------
# The compiled train step.

def batch(cfg, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  b, r = cfg.batch_size, cfg.data.response_len
  lens = rng.integers(2, r + 1, (b,)).astype(np.int32)
  return {"prompt": rng.integers(3, 120, (b, PROMPT_LEN)).astype(np.int32),
          "response": rng.integers(3, 120, (b, r)).astype(np.int32), "response_len": lens,
          "target_len": np.full((b,), r, np.int32), "valid": np.ones((b,), bool),
          "audio_len": np.full((b,), cfg.data.samples, np.int32),
          "enc": rng.normal(size=(b, cfg.data.mel_frames // 2, 64)).astype(np.float32)}


@pytest.fixture(scope="module")
def steps():
  """configs/tiny.py (LoRA LM) on (1, 8, 1), one train step compiled under each preset."""
  base = config_lib.load("tiny")
  out = {}
  for name in ("lora_dp", "full_fsdp"):
    # A model each: the step donates the trained weights it starts from.
    model = WhisperLLaDA(base.resolved_model(), rngs=nnx.Rngs(0))
    # LoRA B starts at 0; make it non-zero so gradients reach A as well.
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
      if path[-1] == "b":
        v.set_value(jax.random.normal(jax.random.key(len(path)), v.shape) * 0.05)
    cfg = dataclasses.replace(base, sharding=name)
    trainer = Trainer(cfg, model, sharding.make_mesh((1, 8, 1)), prompt_len=PROMPT_LEN,
                      from_encoder=True)
    compiled = trainer.lower().compile()
    state, metrics = compiled(trainer.init_state(), trainer.frozen, trainer.put_batch(batch(cfg)))
    # A stacked weight is gathered a layer at a time inside the layer scan: its per-layer shape.
    frozen = {stacked.layer_shape(v) for p, v in nnx.to_flat_state(trainer.frozen)
              if p[0] == "lm" and p[-1] in ("kernel", "embedding")}
    out[name] = {"collectives": hlo.collectives(compiled.as_text()), "frozen_shapes": frozen,
                 "loss": float(metrics["loss"]), "params": jax.device_get(state["params"])}
  return out


def gathered_frozen(step) -> list:
  return [c for c in step["collectives"] if c.kind == "all-gather"
          and any(dims in step["frozen_shapes"] for _, dims in c.result)]


def test_lora_dp_step_gathers_no_frozen_weight(steps):
  assert len(steps["lora_dp"]["frozen_shapes"]) >= 6  # q/k/v/o, MLP, embedding, head
  assert gathered_frozen(steps["lora_dp"]) == []
  assert len(gathered_frozen(steps["full_fsdp"])) >= len(steps["full_fsdp"]["frozen_shapes"])


def test_presets_give_the_same_step(steps):
  np.testing.assert_allclose(steps["lora_dp"]["loss"], steps["full_fsdp"]["loss"], atol=1e-5)
  want = dict(jax.tree_util.tree_leaves_with_path(steps["full_fsdp"]["params"]))
  for path, got in jax.tree_util.tree_leaves_with_path(steps["lora_dp"]["params"]):
    np.testing.assert_allclose(got, want[path], atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_log_mel_runs_per_batch_shard():
  """XLA's partitioner does not split the FFT over the batch: without `sharding.map_rows` every
  device gathered the whole batch's audio frames and transformed all of them."""
  mesh, rules = sharding.make_mesh((1, 8, 1)), sharding.preset("lora_dp")
  audio = np.random.default_rng(0).normal(size=(8, 6400)).astype(np.float32) * 0.1
  x = jax.device_put(audio, sharding.batch_sharding(mesh, rules, audio.shape))
  with sharding.use(mesh, rules):
    compiled = jax.jit(functools.partial(features.log_mel, frames=40)).lower(x).compile()
  assert hlo.collectives(compiled.as_text()) == []
  np.testing.assert_allclose(compiled(x), features.log_mel(audio, frames=40), atol=1e-5)
