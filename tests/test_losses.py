"""Training objectives against straightforward torch / numpy references on the same masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llada_jax.train import losses

B, R, V, MASK = 4, 12, 50, 49


@pytest.fixture(scope="module")
def data():
  keys = jax.random.split(jax.random.key(0), 3)
  logits = jax.random.normal(keys[0], (B, R, V)) * 3
  response = jax.random.randint(keys[1], (B, R), 0, MASK)
  valid = jnp.array([True, True, True, False])  # the last row pads a short batch
  return logits, response, valid


def test_noise_masks_each_token_with_probability_t():
  response = jnp.zeros((512, 256), jnp.int32) + 7
  for weighting in ("paper", "llada"):
    noise = losses.sample_noise(jax.random.key(1), response, MASK, weighting=weighting, eps=0.1)
    frac = np.asarray(noise.masked.mean(axis=1))
    np.testing.assert_allclose(frac, np.asarray(noise.p_mask), atol=0.12)
    assert np.all(np.asarray(noise.tokens) == np.where(np.asarray(noise.masked), MASK, 7))
    p = np.asarray(noise.p_mask)
    assert p.min() >= (0.1 if weighting == "llada" else 0.0) and p.max() <= 1.0
  # t is uniform: across rows the mean mask rate is about one half
  assert abs(float(noise.masked.mean()) - 0.5) < 0.06


def test_diffusion_paper_loss_is_torch_mean_over_masked_tokens(data):
  logits, response, valid = data
  noise = losses.sample_noise(jax.random.key(2), response, MASK, weighting="paper")
  total, count = losses.diffusion_loss(logits, response, noise, valid, weighting="paper")
  got = float(losses.mean(total, count))

  sel = torch.tensor(np.asarray(noise.masked) & np.asarray(valid)[:, None])
  ref = F.cross_entropy(torch.tensor(np.asarray(logits))[sel],
                        torch.tensor(np.asarray(response)).long()[sel])
  assert int(count) == int(sel.sum()) > 0
  np.testing.assert_allclose(got, float(ref), rtol=1e-6)


def test_diffusion_llada_loss_is_llada_sft_formula(data):
  logits, response, valid = data
  noise = losses.sample_noise(jax.random.key(3), response, MASK, weighting="llada", eps=1e-3)
  total, count = losses.diffusion_loss(logits, response, noise, valid, weighting="llada")

  # LLaDA's SFT guideline, rows that pad the batch dropped: token CE / p_mask, divided by the
  # answer length (every response position, EOS padding included), summed, / batch size.
  lg = np.asarray(logits, np.float64)[np.asarray(valid)]
  tgt = np.asarray(response)[np.asarray(valid)]
  masked = np.asarray(noise.masked)[np.asarray(valid)]
  p = np.asarray(noise.p_mask, np.float64)[np.asarray(valid)]
  logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  p_tok = np.broadcast_to(p[:, None], masked.shape)
  answer_len = np.full(masked.shape, R)
  ref = np.sum(ce[masked] / p_tok[masked] / answer_len[masked]) / lg.shape[0]
  np.testing.assert_allclose(float(losses.mean(total, count)), ref, rtol=1e-5)
  assert int(count) == 3


def test_ar_loss_is_hf_shifted_ce_on_the_response_only():
  p_len, a_len = 5, 6
  keys = jax.random.split(jax.random.key(4), 3)
  full = jax.random.normal(keys[0], (B, p_len + a_len + R, V))
  prefix = jax.random.randint(keys[1], (B, p_len + a_len), 0, V)
  response = jax.random.randint(keys[2], (B, R), 0, V)
  response_len = jnp.array([R, 4, 1, 7])
  valid = jnp.array([True, True, True, False])

  start = p_len + a_len
  total, count = losses.ar_loss(full[:, start - 1:start + R - 1], response, response_len, valid)

  # transformers' causal-LM loss: labels = input ids with -100 where not a target, shifted by one.
  labels = np.concatenate([np.full((B, start), -100), np.asarray(response)], axis=1)
  for b in range(B):
    labels[b, start + int(response_len[b]):] = -100
    if not valid[b]:
      labels[b] = -100
  ref = F.cross_entropy(torch.tensor(np.asarray(full[:, :-1])).reshape(-1, V),
                        torch.tensor(labels[:, 1:]).reshape(-1).long(), ignore_index=-100)
  np.testing.assert_allclose(float(losses.mean(total, count)), float(ref), rtol=1e-6)
  assert int(count) == R + 4 + 1

  # prompt and audio positions are never targets: their logits do not matter
  noisy = full.at[:, :start - 1].set(0.0)
  again = losses.ar_loss(noisy[:, start - 1:start + R - 1], response, response_len, valid)
  assert float(again[0]) == float(total)
  del prefix


def test_empty_batch_mean_is_zero_not_nan(data):
  logits, response, valid = data
  nothing = losses.Noise(response, jnp.zeros(response.shape, bool), jnp.zeros((B,)))
  total, count = losses.diffusion_loss(logits, response, nothing, valid)
  assert float(losses.mean(total, count)) == 0.0
