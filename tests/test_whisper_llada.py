"""The Whisper-LLaDA composite: splicing, frozen encoder, causal (Whisper-LLaMA) variant,
sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.whisper_llada import TRAINABLE, WhisperLLaDA
from llada_jax.parallel import sharding

MEL_FRAMES = 200  # 2 s: 100 encoder frames → 5 windows of 17 → 20 audio embeddings


@pytest.fixture(scope="module")
def inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  mel = jax.random.normal(keys[0], (2, 80, MEL_FRAMES))
  prompt = jax.random.randint(keys[1], (2, 7), 0, 120)
  response = jax.random.randint(keys[2], (2, 9), 0, 120)
  return mel, prompt, response


@pytest.mark.parametrize("causal", [False, True])
def test_splice_equals_manual(inputs, causal):
  mel, prompt, response = inputs
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(causal=causal), rngs=nnx.Rngs(0))

  @nnx.jit  # each side as one program (op by op, every operation compiles alone)
  def manual(model, mel, prompt, response):
    audio = model.projector(model.encoder(mel))
    embeds = jnp.concatenate([model.lm.embed(prompt), audio, model.lm.embed(response)], axis=1)
    return audio, model.lm(embeds=embeds)

  logits = nnx.jit(lambda m, *x: m(*x))(model, mel, prompt, response)
  audio, want = manual(model, mel, prompt, response)
  assert audio.shape == (2, model.num_audio_embeddings(MEL_FRAMES), 48) == (2, 20, 48)
  np.testing.assert_allclose(logits, want, atol=1e-6)
  assert logits.shape == (2, 7 + 20 + 9, 128)


def test_text_only_ablation_has_no_audio(inputs):
  mel, prompt, response = inputs
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(0))
  assert model(None, prompt, response).shape == (2, 7 + 9, 128)


def test_only_projector_and_lora_are_trained(inputs):
  mel, prompt, response = inputs
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(0))
  # make LoRA B non-zero so gradients reach A as well
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
    if path[-1] == "b":
      v.set_value(jnp.full(v.shape, 0.01))

  def loss(m):
    return m(mel, prompt, response).mean()

  # under jit: one program per gradient instead of one per operation
  grads = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, TRAINABLE)))(model)
  tops = {p[0] for p, _ in nnx.to_flat_state(grads)}
  assert tops == {"projector", "lm"}
  lm_leaves = {p[-2:] for p, _ in nnx.to_flat_state(grads) if p[0] == "lm"}
  assert lm_leaves <= {("lora", "a"), ("lora", "b")}
  assert all(float(jnp.abs(v[...]).max()) > 0 for _, v in nnx.to_flat_state(grads))
  # and the encoder is behind a stop-gradient even when asked for everything
  full = nnx.jit(nnx.grad(loss))(model)
  enc = nnx.state(full, nnx.PathContains("encoder"))
  assert all(float(jnp.abs(v[...]).max()) == 0 for _, v in nnx.to_flat_state(enc))


@pytest.mark.parametrize("shape", [(1, 4, 2), (2, 2, 2), (8, 1, 1)])
def test_sharded_forward_equals_single_device(inputs, shape):
  """fsdp × tensor, 3-D, and pure data-parallel meshes give the single-device logits."""
  assert jax.device_count() >= 8, "conftest sets 8 simulated CPU devices"
  # batch 8 so that every data-parallel split of the 8 devices divides it
  mel, prompt, response = (jnp.concatenate([x] * 4) for x in inputs)
  cfg = WhisperLLaDAConfig.tiny_test()
  want = WhisperLLaDA(cfg, rngs=nnx.Rngs(0))(mel, prompt, response)

  mesh = sharding.make_mesh(shape)
  rules = sharding.ShardingConfig.full_fsdp()
  model = sharding.shard_model(WhisperLLaDA(cfg, rngs=nnx.Rngs(0)), mesh, rules)
  kernel = model.lm.layers.mlp.gate_proj.kernel[...]  # [layers, embed, mlp]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp" if shape[1] > 1 else None, "tensor" if shape[2] > 1 else None
  ) or shape == (8, 1, 1)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, rules, x.shape))
  with sharding.use(mesh, rules):
    got = nnx.jit(lambda m, a, p, r: m(a, p, r))(model, put(mel), put(prompt), put(response))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
