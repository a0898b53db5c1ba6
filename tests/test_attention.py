"""Attention kernels (`configs.ATTENTION`) agree with the XLA einsums, and cached decode steps read
the KV cache without copying it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from llada_jax.config_files import ConfigError
from llada_jax.models import kernels, layers
from llada_jax.models.config import LMConfig, QFormerConfig, WhisperConfig
from llada_jax.models.qformer import WindowQFormer
from llada_jax.models.transformer import Transformer, init_cache
from llada_jax.models.whisper import Whisper
from llada_jax.parallel import sharding

TOL = 1e-5


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _close(a, b, tol=TOL):
  diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
  assert diff <= tol, diff


# --- config and kernel choice -------------------------------------------------------------------
def test_attention_field_is_validated():
  for cls in (WhisperConfig, QFormerConfig, LMConfig):
    with pytest.raises(ConfigError, match=r"attention='flash'.*expected one of"):
      cls.tiny_test(attention="flash")
  assert LMConfig.tiny_test().attention == "xla"


def test_unavailable_kernels_fail_clearly_on_cpu():
  assert layers.attention_kernel("auto", "float32") == "xla"
  assert layers.attention_kernel("dot_product", "bfloat16") == "dot_product"
  with pytest.raises(ValueError, match="'cudnn'.*needs a GPU"):
    layers.attention_kernel("cudnn", "bfloat16")
  with pytest.raises(ValueError, match="'splash'.*needs a TPU"):
    Transformer(LMConfig.tiny_test(attention="splash"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'cudnn'.*needs a GPU"):
    Whisper(WhisperConfig.tiny_test(attention="cudnn"), rngs=nnx.Rngs(0))
  q = _rand(0, (1, 4, 2, 8))
  with pytest.raises(ValueError, match="'splash'.*needs a TPU"):
    layers.attention(q, q, q, implementation="splash")
  with pytest.raises(ValueError, match="dropout needs implementation 'xla'"):
    layers.attention(q, q, q, implementation="dot_product", probs_dropout=lambda p: p)


# --- jax.nn.dot_product_attention (XLA) equals the einsums ------------------------------------
def test_whisper_dot_product_equals_xla():
  mel = _rand(1, (2, 80, 300))
  ids = jnp.asarray([[1, 5, 9, 4], [1, 7, 3, 3]], jnp.int32)
  ref = Whisper(WhisperConfig.tiny_test(), rngs=nnx.Rngs(0))
  new = Whisper(WhisperConfig.tiny_test(attention="dot_product"), rngs=nnx.Rngs(0))
  _close(new.encode(mel), ref.encode(mel))
  _close(new(mel, ids), ref(mel, ids))  # decoder: causal self-attention + cross-attention


@pytest.mark.parametrize("causal", [False, True])
def test_lm_dot_product_equals_xla(causal):
  """Bidirectional and causal, with key padding; tiny_test has 4 query heads on 2 KV heads."""
  ref = Transformer(LMConfig.tiny_test(causal=causal), rngs=nnx.Rngs(0))
  new = Transformer(LMConfig.tiny_test(causal=causal, attention="dot_product"), rngs=nnx.Rngs(0))
  assert ref.config.n_kv_heads < ref.config.n_heads
  tokens = jax.random.randint(jax.random.key(2), (2, 13), 0, 128)
  key_mask = jnp.arange(13)[None, :] >= jnp.asarray([[0], [4]])  # row 1 left-padded by 4
  _close(new(tokens, key_mask=key_mask), ref(tokens, key_mask=key_mask))
  # cache fill, then two AR steps written into the cache (update_cache=True)
  outs = []
  for lm in (ref, new):
    cache = init_cache(lm.config, 2, 20)
    logits, cache = lm.forward(None, tokens, response_mask=key_mask, cache=cache)
    steps = [logits]
    for i in range(2):
      logits, cache = lm.forward(None, tokens[:, i:i + 1], cache=cache, cache_index=13 + i)
      steps.append(logits)
    outs.append(steps)
  for a, b in zip(*outs):
    _close(a, b)


def test_lm_gradients_dot_product_equal_xla():
  """Training through jax.nn.dot_product_attention: the same gradients as the einsums."""
  tokens = jax.random.randint(jax.random.key(8), (2, 9), 0, 128)
  key_mask = jnp.arange(9)[None, :] >= jnp.asarray([[0], [2]])
  grads = []
  for kernel in ("xla", "dot_product"):
    lm = Transformer(LMConfig.tiny_test(attention=kernel), rngs=nnx.Rngs(0))
    loss = lambda m: jnp.mean(jax.nn.log_softmax(m(tokens, key_mask=key_mask))[..., 3])
    grads.append(jax.tree.leaves(nnx.grad(loss)(lm)))
  for a, b in zip(*grads):
    _close(a, b, tol=TOL * max(1.0, float(np.abs(np.asarray(a)).max())))


def test_qformer_dot_product_equals_xla_and_dropout_stays_on_xla():
  frames = _rand(3, (2, 51, 64))
  ref = WindowQFormer(QFormerConfig.tiny_test(), rngs=nnx.Rngs(0))
  new = WindowQFormer(QFormerConfig.tiny_test(attention="dot_product"), rngs=nnx.Rngs(0))
  _close(new(frames), ref(frames))
  ref = WindowQFormer(QFormerConfig.tiny_test(dropout=0.1), rngs=nnx.Rngs(0))
  new = WindowQFormer(QFormerConfig.tiny_test(dropout=0.1, attention="dot_product"),
                      rngs=nnx.Rngs(0))
  ref.train()
  new.train()
  _close(new(frames), ref(frames))  # the same dropout masks: probabilities dropped on both


# --- splash (Pallas interpreter on CPU) ---------------------------------------------------------
@pytest.mark.parametrize("case", ["full", "key_padding", "causal_padding_gqa"])
def test_splash_interpreted_equals_xla(case, monkeypatch):
  monkeypatch.setattr(kernels, "INTERPRET", True)
  b, t, h, d = 2, 20, 4, 16
  kv = 2 if case == "causal_padding_gqa" else h
  q, k, v = _rand(4, (b, t, h, d)), _rand(5, (b, t, kv, d)), _rand(6, (b, t, kv, d))
  mask = None if case == "full" else (jnp.arange(t)[None, :] < jnp.asarray([[t], [13]]))[
      :, None, None, :]
  causal = case == "causal_padding_gqa"
  got = layers.attention(q, k, v, mask, causal=causal, implementation="splash")
  _close(got, layers.attention(q, k, v, mask, causal=causal))
  with pytest.raises(ValueError, match=r"only key-padding masks of shape \[B, 1, 1, S\]"):
    layers.attention(q, k, v, jnp.ones((1, 1, t, t), bool), implementation="splash")


# --- cached decode steps ------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", ["middle", "end"])
def test_cached_step_equals_full_forward(causal, window):
  """A read-only cached step over a cache filled with the same sequence gives the full forward's
  logits at the window (dual cache: a middle window; prefix cache: the window runs to the end)."""
  lm = Transformer(LMConfig.tiny_test(causal=causal), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(7), (2, 16), 0, 128)
  key_mask = jnp.arange(16)[None, :] >= jnp.asarray([[0], [3]])
  full = lm(tokens, key_mask=key_mask)
  cache = init_cache(lm.config, 2, 24)
  _, cache = lm.forward(None, tokens, response_mask=key_mask, cache=cache)
  start, stop = (6, 12) if window == "middle" else (10, 16)
  logits, same = lm.forward(None, tokens[:, start:stop], response_mask=key_mask[:, start:stop],
                            cache=cache, cache_index=start, update_cache=False)
  assert same is cache
  _close(logits, full[:, start:stop])


def _computations(hlo: str) -> dict[str, str]:
  comps, name, lines = {}, None, []
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head and name is None:
      name, lines = head.group(1), []
    elif line.startswith("}") and name is not None:
      comps[name] = "\n".join(lines)
      name = None
    elif name is not None:
      lines.append(line)
  return comps


def _loop_text(hlo: str) -> str:
  """The text of every while-loop body and condition and of all they call (fusions included)."""
  comps = _computations(hlo)
  todo = [n for text in comps.values() for n in re.findall(r"(?:body|condition)=%?([\w.\-]+)",
                                                            text)]
  seen: set[str] = set()
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    todo += [n for n in re.findall(r"%([\w.\-]+)", comps[name]) if n in comps]
  assert seen, "no while loop in the compiled module"
  return "\n".join(comps[n] for n in seen)


def cache_writes_in_loop(update_cache: bool) -> list[str]:
  """Compile three cached decode steps in a `fori_loop` that carries the cache (as the diffusion
  decoder does) and list the loop's copies / dynamic-update-slices of a cache-shaped buffer."""
  lm = Transformer(LMConfig.tiny_test(), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(lm)
  b, s = 2, 40
  cache = init_cache(lm.config, b, s)
  shape = cache.k[0].shape
  window = jnp.zeros((b, 8), jnp.int32)

  def decode(state, cache, window):
    lm = nnx.merge(graphdef, state)

    def step(i, carry):
      window, cache = carry
      logits, new = lm.forward(None, window, cache=cache, cache_index=8 + 8 * (i % 3),
                               update_cache=update_cache)
      return jnp.argmax(logits, -1).astype(jnp.int32), new

    return jax.lax.fori_loop(0, 3, step, (window, cache))

  hlo = jax.jit(decode).lower(state, cache, window).compile().as_text()
  # One layer's buffer [B, S, K, D] or the whole stack's [L, B, S, K, D].
  buffer = "|".join(re.escape(f"f32[{','.join(map(str, s))}]") for s in (shape, cache.k.shape))
  return re.findall(rf"= (?:{buffer})(?:\{{[^}}]*\}})? (?:copy|dynamic-update-slice)\(.*",
                    _loop_text(hlo))


def test_cached_step_does_not_copy_the_cache():
  assert cache_writes_in_loop(update_cache=False) == []
  # the detector sees cache writes: AR steps write every layer's K/V into the cache
  assert cache_writes_in_loop(update_cache=True)


def test_kv_cache_is_sharded_by_logical_names():
  """The cache [L, B, S, K, D]: batch over data × fsdp, KV heads over tensor (`act_kv_heads`)."""
  mesh = sharding.make_mesh((2, 1, 2), devices=jax.devices()[:4])
  with sharding.use(mesh, sharding.ShardingConfig.full_fsdp()):
    cache = jax.jit(lambda: init_cache(LMConfig.tiny_test(), 2, 16))()
  want = NamedSharding(mesh, P(None, ("data", "fsdp"), None, "tensor", None))
  assert cache.k.sharding.is_equivalent_to(want, 5), cache.k.sharding
