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
  nothing = losses.Noise(response, jnp.zeros(response.shape, bool), jnp.zeros((B,)),
                         jnp.zeros(response.shape))
  total, count = losses.diffusion_loss(logits, response, nothing, valid)
  assert float(losses.mean(total, count)) == 0.0


def test_pad_groups_must_tile_the_batch():
  with pytest.raises(ValueError, match="batch of 6 rows is not whole groups of data.pad_group=4"):
    losses.sample_noise(jax.random.key(0), jnp.zeros((6, 5), jnp.int32), 9, pad_group=4)


def test_paper_objective_equals_diffusion_asr_forward_with_group_padding():
  """The whole `paper` objective vs Diffusion-ASR's `WhisperLLaDA.forward` + DDP on the same batch
  and mask draws: two "GPUs" of 4 rows, each padded with EOS to its longest transcript (no EOS
  appended) and run at that length; loss = mean over GPUs of the CE mean over masked tokens.
  Ours runs every row at the static response length with later positions key-masked."""
  from flax import nnx

  from llada_jax.models.config import WhisperLLaDAConfig
  from llada_jax.models.whisper_llada import WhisperLLaDA
  from llada_jax.train.step import response_logits

  cfg = WhisperLLaDAConfig.tiny_test()
  model = WhisperLLaDA(cfg, rngs=nnx.Rngs(0))
  nnx.update(model, jax.tree.map(lambda x: x * 3.0, nnx.state(model, nnx.Param)))
  eos, mask_id, r, group = cfg.lm.eos_id, cfg.lm.mask_id, 16, 4
  rng = np.random.default_rng(0)
  lengths = [5, 9, 3, 7, 12, 2, 4, 6]  # transcript tokens per row (group maxima 9 and 12)
  texts = [rng.integers(3, 100, n) for n in lengths]
  response = np.full((8, r), eos, np.int32)
  for i, t in enumerate(texts):
    response[i, :len(t)] = t
  target = np.repeat([max(lengths[:4]), max(lengths[4:])], 4).astype(np.int32)
  batch = {"enc": rng.standard_normal((8, 34, cfg.whisper.d_model)).astype(np.float32),
           "prompt": np.tile(rng.integers(3, 100, (1, 5)), (8, 1)).astype(np.int32),
           "response": response, "target_len": target, "valid": np.ones(8, bool)}
  targets = np.arange(r)[None, :] < target[:, None]
  noise = losses.sample_noise(jax.random.key(4), jnp.asarray(response), mask_id,
                              targets=jnp.asarray(targets), valid=jnp.ones(8, bool),
                              pad_group=group)
  masked = np.asarray(noise.masked)
  assert not masked[~targets].any()  # past a group's longest transcript nothing is a target
  # Both sides' forwards run as one program each (op by op, every operation compiles alone).
  logits = nnx.jit(lambda m, b, t: response_logits(m, b, t, causal=False,
                                                   n_mels=cfg.whisper.n_mels,
                                                   mel_frames=68))(model, batch, noise.tokens)
  total, count = losses.diffusion_loss(logits, jnp.asarray(response), noise, jnp.ones(8, bool),
                                       weighting="paper", targets=jnp.asarray(targets))
  ours = float(losses.mean(total, count))

  # The reference: each GPU's 4 rows at their own length L (no key mask, nothing beyond L).
  @nnx.jit
  def reference_logits(model, enc, prompt, block):
    audio = model.projector(enc)
    x = jnp.concatenate([model.lm.embed(prompt), audio, model.lm.embed(block)], axis=1)
    return model.lm(embeds=x)

  gpu_losses = []
  for g in range(2):
    rows = slice(4 * g, 4 * g + 4)
    length = int(target[4 * g])
    labels = response[rows, :length]
    m = masked[rows, :length]
    block = np.where(m, mask_id, labels)
    full = np.asarray(reference_logits(model, batch["enc"][rows], batch["prompt"][rows],
                                       block))[:, -length:]
    gpu_losses.append(F.cross_entropy(torch.tensor(full)[torch.tensor(m)],
                                      torch.tensor(labels).long()[torch.tensor(m)]))
  theirs = float(torch.stack(gpu_losses).mean())
  assert masked[:4].any() and masked[4:].any()
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
