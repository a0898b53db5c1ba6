"""Layer stacks (models.stacked): the scanned model computes what its layers one by one do.

The reference "unrolled" model is the stack's layers taken out one at a time (`stacked.layer`)
and applied in a Python loop; the scanned forward runs under jit (a `lax.scan`), the eager one in
the stack's own per-layer loop.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llada_jax import config_files
from llada_jax.models import checkpoint, stacked
from llada_jax.models.config import (
  REMAT_POLICIES,
  LMConfig,
  LoRAConfig,
  QFormerConfig,
  WhisperConfig,
)
from llada_jax.models.qformer import WindowQFormer, cut_windows
from llada_jax.models.transformer import Transformer, init_cache, rope_frequencies
from llada_jax.models.whisper import Whisper
from llada_jax.train.config import TrainConfig
from llada_jax.train.optimizer import make_optimizer


def _lm(**changes) -> Transformer:
  cfg = dataclasses.replace(LMConfig.tiny_test(n_layers=3), lora=LoRAConfig(dropout=0.0),
                            **changes)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):  # B ≠ 0: adapters matter
    if path[-1] == "b":
      v.set_value(jax.random.normal(jax.random.key(7), v.shape) * 0.1)
  return model


def _unrolled_lm(model: Transformer, tokens: jax.Array) -> jax.Array:
  c = model.config
  b, t = tokens.shape
  x = model.embed(tokens)
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  mask = jnp.ones((b, t), bool)
  for i in range(c.n_layers):
    x, _ = stacked.layer(model.layers, i)(x, positions, rope_frequencies(c), mask, None, 0)
  return model.logits(model.norm(x))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 11)), jnp.int32)


def test_stack_is_laid_out_per_layer_and_named_per_layer_on_disk():
  model = _lm()
  kernel = model.layers.mlp.up_proj.kernel
  assert kernel.shape == (3, 48, 96)
  assert kernel.get_metadata()["logical_axes"] == ("layers", "embed", "mlp")
  names = stacked.per_layer_names(nnx.state(model))
  assert names["layers.2.mlp.up_proj.kernel"] == (("layers", "mlp", "up_proj", "kernel"), 2)
  assert names["layers.0.self_attn.q_proj.lora.a"][1] == 0
  assert names["norm.scale"] == (("norm", "scale"), None)
  assert not any(re.match(r"layers\.[a-z]", n) for n in names)
  # the same random init as a list of layers: layer i's weights are the i-th draw
  assert not np.allclose(kernel[...][0], kernel[...][1])


@pytest.mark.parametrize("causal", [False, True])
def test_scanned_lm_equals_unrolled(causal):
  model = _lm(causal=causal)
  want = _unrolled_lm(model, TOKENS)
  eager = model(TOKENS)
  scanned = nnx.jit(lambda m, t: m(t))(model, TOKENS)
  with stacked.unrolled():
    flat = nnx.jit(lambda m, t: m(t))(model, TOKENS)
  for got in (eager, scanned, flat):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  if not causal:  # the cached diffusion forwards: fill the cache, then a window over it unwritten
    cache = init_cache(model.config, 2, TOKENS.shape[1])
    fill = lambda m, t, c: m.forward(None, t, cache=c)  # noqa: E731
    window = lambda m, t, c: m.forward(None, t, cache=c, cache_index=5,  # noqa: E731
                                       update_cache=False)[0]
    for run in (lambda f, *a: f(*a), lambda f, *a: nnx.jit(f)(*a)):  # eager loop, then the scan
      logits, filled = run(fill, model, TOKENS, cache)
      np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5, rtol=0)
      got = run(window, model, TOKENS[:, 5:8], filled)
      np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, 5:8]), atol=1e-5, rtol=0)
  if causal:  # AR with the [L, B, S, K, D] cache in the scan carry: prefix, then token by token
    cache = init_cache(model.config, 2, TOKENS.shape[1])
    step = nnx.jit(lambda m, t, c, i: m.forward(None, t, cache=c, cache_index=i))
    logits, cache = step(model, TOKENS[:, :5], cache, 0)
    rows = [logits]
    for i in range(5, TOKENS.shape[1]):
      logits, cache = step(model, TOKENS[:, i:i + 1], cache, i)
      rows.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(rows, 1)), np.asarray(want),
                               atol=1e-5, rtol=0)


def test_gradients_identical_across_remat_policies():
  grads = {}
  for policy in REMAT_POLICIES:
    model = _lm(remat=policy)
    loss = lambda m: jnp.mean(jnp.square(m(TOKENS)))  # noqa: E731
    g = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam)))(model)
    grads[policy] = jax.tree.leaves(g)
  for policy, leaves in grads.items():
    for got, want in zip(leaves, grads["none"]):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-7, rtol=1e-6,
                                 err_msg=policy)
  assert any(float(jnp.abs(leaf).max()) > 0 for leaf in grads["none"])


def test_remat_config_field():
  with pytest.raises(config_files.ConfigError, match=r"LMConfig.remat=True"):  # a policy name
    LMConfig.tiny_test(remat=True)
  cfg = config_files.override(config_files.load("tiny", TrainConfig), ["remat=dots_saveable"])
  assert cfg.remat == "dots_saveable"
  assert config_files.override(cfg, ["remat=full"]).remat == "full"
  with pytest.raises(config_files.ConfigError, match=r"LMConfig.remat='some'"):
    LMConfig.tiny_test(remat="some")


def test_scanned_whisper_encoder_and_qformer_equal_unrolled():
  whisper = Whisper(WhisperConfig.tiny_test(), rngs=nnx.Rngs(0))
  enc = whisper.encoder
  mel = jnp.asarray(np.random.default_rng(1).standard_normal((2, 80, 60)), jnp.float32)
  x = jax.nn.gelu(enc.conv2(jax.nn.gelu(enc.conv1(jnp.swapaxes(mel, 1, 2)), approximate=False)),
                  approximate=False)
  x = x + enc.embed_positions.embedding[:30]
  for i in range(enc.config.encoder_layers):
    x = stacked.layer(enc.layers, i)(x)
  want = enc.layer_norm(x)
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda e, m: e(m))(enc, mel)), np.asarray(want),
                             atol=1e-5, rtol=0)

  qf = WindowQFormer(QFormerConfig.tiny_test(), rngs=nnx.Rngs(0))
  c = qf.config
  frames = jnp.asarray(np.random.default_rng(2).standard_normal((2, 40, c.encoder_width)),
                       jnp.float32)
  windows = cut_windows(frames, c.window_frames)
  q = jnp.broadcast_to(qf.query_tokens[...], (windows.shape[0], c.num_queries, c.hidden_size))
  q = qf.input_norm(q)
  for i in range(c.num_layers):
    q = stacked.layer(qf.layers, i)(q, windows)
  want = qf.proj(q).reshape(2, -1, c.out_dim)
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, f: m(f))(qf, frames)),
                             np.asarray(want), atol=1e-5, rtol=0)


def test_checkpoint_round_trip_keeps_per_layer_names(tmp_path):
  model = _lm()
  items = [(n, np.asarray(v)) for n, v in stacked.per_layer_items(
      nnx.state(model, nnx.Not(checkpoint.RNG_STATE)))]
  assert "layers.1.self_attn.k_proj.lora.b" in dict(items)
  checkpoint.save(tmp_path / "m", model.config, items)
  index = checkpoint.read_index(tmp_path / "m")["params"]
  assert index["layers.1.mlp.up_proj.kernel"]["shape"] == [48, 96]
  loaded = checkpoint.load(tmp_path / "m")
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                               nnx.to_flat_state(nnx.state(loaded, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))
  # a layer missing on disk is named
  with pytest.raises(ValueError, match=r"layers/mlp/up_proj/kernel.*\[2\]"):
    stacked.assign(nnx.state(loaded), [(n, a) for n, a in items
                                       if n != "layers.2.mlp.up_proj.kernel"])


def test_weight_decay_skips_stacked_norms_and_biases():
  cfg = dataclasses.replace(config_files.load("tiny", TrainConfig), full_finetune=True)
  tx, _ = make_optimizer(cfg)
  params = {"lm": {"layers": {"input_layernorm": {"scale": jnp.ones((2, 8))},
                              "mlp": {"up_proj": {"kernel": jnp.ones((2, 8, 4))}}}},
            "projector": {"proj": {"bias": jnp.ones((8,))}}}
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["lm"]["layers"]["input_layernorm"]["scale"], 1.0)
  np.testing.assert_array_equal(new["projector"]["proj"]["bias"], 1.0)
  assert float(new["lm"]["layers"]["mlp"]["up_proj"]["kernel"].max()) < 1.0
