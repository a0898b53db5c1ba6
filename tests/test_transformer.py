"""LLaDA / LLaMA transformer vs transformers' PyTorch LlamaForCausalLM (fp32, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from llada_jax.convert.mapping import HF_LLAMA, DictSource, load_into
from llada_jax.models.config import LMConfig, LoRAConfig, RopeScaling
from llada_jax.models.transformer import Transformer, init_cache, merge_lora

TOL = 1e-4


def torch_llama(cfg: LMConfig, seed: int = 0) -> transformers.LlamaForCausalLM:
  torch.manual_seed(seed)
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": s.factor,
            "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings}
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings,
      rope_parameters=rope, attention_bias=False, mlp_bias=False, attn_implementation="eager")
  model = transformers.LlamaForCausalLM(hf).eval()
  with torch.no_grad():  # default init has tiny norms; randomise them so the test can see them
    for name, p in model.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
  return model


def ported(cfg: LMConfig, ref) -> Transformer:
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  state = ref.state_dict()
  if cfg.tie_embeddings:
    state.pop("lm_head.weight", None)
  return load_into(model, DictSource(state), HF_LLAMA, what="torch llama")


def torch_logits(ref, tokens, key_valid=None, bidirectional=False):
  ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
  mask = None
  if bidirectional:
    b, t = ids.shape
    valid = (torch.ones(b, t, dtype=torch.bool) if key_valid is None
             else torch.tensor(np.asarray(key_valid)))
    # An additive float mask: with a *boolean* 4-D mask, transformers 5's eager attention adds the
    # bools to the scores (True → +1, False → +0), which is bidirectional when all True but does not
    # mask padding.
    mask = torch.zeros(b, 1, t, t).masked_fill(~valid[:, None, None, :],
                                               torch.finfo(torch.float32).min)
  with torch.no_grad():
    return ref(input_ids=ids, attention_mask=mask).logits.float().numpy()


@pytest.fixture(scope="module")
def tokens():
  return np.asarray(jax.random.randint(jax.random.key(1), (2, 11), 0, 128), dtype=np.int32)


@pytest.mark.parametrize("tied", [False, True])
def test_causal_matches_llama(tokens, tied):
  cfg = LMConfig.tiny_test(causal=True, tie_embeddings=tied)
  ref = torch_llama(cfg)
  ours = ported(cfg, ref)
  diff = np.abs(np.asarray(ours(jnp.asarray(tokens))) - torch_logits(ref, tokens)).max()
  assert diff <= TOL, diff


def test_llama3_rope_scaling(tokens):
  cfg = LMConfig.tiny_test(causal=True, rope_scaling=RopeScaling(
      factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
                           rope_theta=500000.0)
  ref = torch_llama(cfg)
  ours = ported(cfg, ref)
  diff = np.abs(np.asarray(ours(jnp.asarray(tokens))) - torch_logits(ref, tokens)).max()
  assert diff <= TOL, diff


def test_bidirectional_matches_llama_with_full_mask(tokens):
  cfg = LMConfig.tiny_test(causal=False)
  ref = torch_llama(cfg)
  ours = ported(cfg, ref)
  got = np.asarray(ours(jnp.asarray(tokens)))
  want = torch_logits(ref, tokens, bidirectional=True)
  assert np.abs(got - want).max() <= TOL
  # and it really is bidirectional: the causal reference differs
  assert np.abs(got - torch_logits(ref, tokens)).max() > 1e-2


def test_bidirectional_key_padding(tokens):
  cfg = LMConfig.tiny_test(causal=False)
  ref = torch_llama(cfg)
  ours = ported(cfg, ref)
  valid = np.ones(tokens.shape, bool)
  valid[0, 8:] = False
  valid[1, :2] = False
  got = np.asarray(ours(jnp.asarray(tokens), key_mask=jnp.asarray(valid)))
  want = torch_logits(ref, tokens, key_valid=valid, bidirectional=True)
  assert np.abs(got - want)[valid].max() <= TOL
  # padding keys are ignored: changing a padded token changes no valid row's output
  changed = tokens.copy()
  changed[0, 9] = (changed[0, 9] + 1) % cfg.vocab_size
  again = np.asarray(ours(jnp.asarray(changed), key_mask=jnp.asarray(valid)))
  assert np.abs(again - got)[valid].max() <= 1e-6


def test_embeds_equal_tokens(tokens):
  model = Transformer(LMConfig.tiny_test(), rngs=nnx.Rngs(0))
  ids = jnp.asarray(tokens)
  np.testing.assert_allclose(model(embeds=model.embed(ids)), model(ids), atol=1e-6)


def test_ar_kv_cache_matches_full_forward(tokens):
  cfg = LMConfig.tiny_test(causal=True)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(tokens)
  full = np.asarray(model(ids))
  cache = init_cache(cfg, batch=2, max_len=16)
  logits, cache = model.forward(None, ids[:, :5], cache=cache)  # prefill
  steps = [np.asarray(logits)]
  for i in range(5, ids.shape[1]):
    logits, cache = model.forward(None, ids[:, i:i + 1], cache=cache, cache_index=i)
    steps.append(np.asarray(logits))
  assert np.abs(np.concatenate(steps, axis=1) - full).max() <= TOL


def test_bidirectional_prefix_cache_matches_full_forward(tokens):
  """Fast-dLLM prefix cache: K/V from one full forward; later steps run the suffix only.

  In a bidirectional model the prefix K/V depend on the suffix, so the cache is exact when the
  suffix is unchanged (checked here) and an approximation once suffix tokens change (Fast-dLLM's
  trade).
  """
  cfg = LMConfig.tiny_test(causal=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(tokens)
  full = np.asarray(model(ids))
  _, cache = model.forward(None, ids, cache=init_cache(cfg, 2, ids.shape[1]))
  suffix, same = model.forward(None, ids[:, 6:], cache=cache, cache_index=6, update_cache=False)
  assert same is cache
  assert np.abs(np.asarray(suffix) - full[:, 6:]).max() <= TOL


def test_lora_zero_b_and_merge(tokens):
  cfg = LMConfig.tiny_test(lora=LoRAConfig(rank=4, alpha=16.0))
  plain = Transformer(LMConfig.tiny_test(), rngs=nnx.Rngs(0))
  adapted = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(tokens)
  np.testing.assert_allclose(adapted(ids), plain(ids), atol=1e-6)  # B = 0
  # give B values, then merge: identical outputs, and no LoRA params left
  for path, v in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)):
    if path[-1] == "b":
      v.set_value(jax.random.normal(jax.random.key(len(path)), v.shape) * 0.1)
  before = np.asarray(adapted(ids))
  assert np.abs(before - np.asarray(plain(ids))).max() > 1e-3
  merge_lora(adapted)
  assert not nnx.state(adapted, nnx.LoRAParam)
  np.testing.assert_allclose(adapted(ids), before, atol=1e-5)


def test_lora_base_frozen_by_filter(tokens):
  cfg = LMConfig.tiny_test(lora=LoRAConfig(rank=2))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(tokens)

  def loss(m):
    return m(ids).mean()

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
  names = {p[-1] for p, _ in nnx.to_flat_state(grads)}
  assert names == {"a", "b"}


def test_bad_input_errors():
  cfg = LMConfig.tiny_test(max_seq_len=16)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"longer than .*max_seq_len 16"):
    model(jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match=r"tokens: expected a rank-2 array, got shape \(5,\)"):
    model(jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match=r"tokens: expected dtype integer"):
    model(jnp.zeros((1, 5), jnp.float32))
  with pytest.raises(ValueError, match=r"embeds: expected last dim 48"):
    model(embeds=jnp.zeros((1, 5, 7)))
