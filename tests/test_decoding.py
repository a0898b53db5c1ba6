"""Jitted batch decoding vs plain reference loops written from the published code.

The references run one row at a time in NumPy, calling the model's forward once per step, and
mirror line by line: LLaDA `generate.py::generate` (with its attention mask, `logits_eos_inf` and
`confidence_eos_eot_inf`; + Fast-dLLM `generate.py`'s threshold rule and prefix cache),
Diffusion-ASR `models/WhisperLLaDA.py::transcribe` (EOS rule) and `::transcribe_correction`
(deliberation). torch RNG is replaced by the engine's own noise arrays (`row_uniform`), so random
paths are compared exactly too. The engine always runs a batch of rows that differ (prompts, audio,
hypothesis lengths), so every comparison is also a batch-invariance check. Models are tiny with
weights ×5, so that the logits are peaked and decoding is not trivial.
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llada_jax.decoding import (
  DeliberationSettings,
  DiffusionSettings,
  adaptive_gen_length,
  decode,
  deliberate,
  generate,
  greedy,
)
from llada_jax.decoding.diffusion import _eos_eot_inf, _generate
from llada_jax.decoding.schedules import Blocks, StepRules
from llada_jax.decoding.scores import CONFIDENCE, GUMBEL, MASKING_SCORES, gumbel_argmax, row_uniform
from llada_jax.models.config import LMConfig, WhisperLLaDAConfig
from llada_jax.models.transformer import Transformer, init_cache
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import sharding

SCALE = 5.0
MEL_FRAMES = 200  # 20 audio embeddings
MASK = 127  # LMConfig.tiny_test's mask_id


def scaled(model, scale=SCALE):
  nnx.update(model, jax.tree.map(lambda x: x * scale, nnx.state(model, nnx.Param)))
  return model


@pytest.fixture(scope="module")
def lm():
  return scaled(Transformer(LMConfig.tiny_test(), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def llada():
  return scaled(WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def audio():
  """Four rows of different audio (batch 4 also fits the 2×2 data×fsdp mesh); prompt ids avoid 0
  (Diffusion-ASR's audio filler), EOS and the mask."""
  k1, k2 = jax.random.split(jax.random.key(0))
  mel = jax.random.normal(k1, (4, 80, MEL_FRAMES))
  prompt = jnp.broadcast_to(jax.random.randint(k2, (1, 5), 3, 120), (4, 5))
  return mel, prompt


KEYS = jax.random.split(jax.random.key(7), 4)  # one key per row


# --- reference pieces: LLaDA generate.py, line by line in NumPy --------------------------------
def add_gumbel_noise(logits, temperature, noise):
  if temperature == 0:
    return logits  # the very array, as LLaDA: `confidence_eos_eot_inf` relies on the aliasing
  logits = logits.astype(np.float64)
  noise = noise.astype(np.float64)  # LLaDA: torch.rand_like(float64); here the engine's draws
  gumbel_noise = (-np.log(noise)) ** temperature
  return np.exp(logits) / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
  mask_num = mask_index.sum(axis=1, keepdims=True)
  base = mask_num // steps
  remainder = mask_num % steps
  num_transfer_tokens = np.zeros((mask_num.shape[0], steps), np.int64) + base
  for i in range(mask_num.shape[0]):
    num_transfer_tokens[i, :remainder[i, 0]] += 1
  return num_transfer_tokens


def softmax64(logits):
  z = logits.astype(np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def topk(values, k):
  """torch.topk's indices; ties: lower index first."""
  return np.argsort(-values, kind="stable")[:k]


class Noise:
  """The engine's per-row noise for forward number `n`, laid out over the whole sequence x."""

  def __init__(self, key, offset, length, vocab):
    self.key, self.offset, self.length, self.vocab = key, offset, length, vocab

  def __call__(self, n):
    pos = jnp.arange(self.length)
    g = np.full((1, self.offset + self.length, self.vocab), 0.5)
    c = np.zeros((1, self.offset + self.length))
    g[0, self.offset:] = row_uniform(self.key, n, GUMBEL, pos, (self.vocab,))
    c[0, self.offset:] = row_uniform(self.key, n, CONFIDENCE, pos)
    return g, c


def _key_mask(prefix, response_mask):
  """[prefix, response] key mask; the prefix embeds are always real."""
  if response_mask is None:
    return None
  return jnp.concatenate([jnp.ones(prefix.shape[:2], bool), response_mask != 0], axis=1)


@nnx.jit
def _lm_full(lm, prefix, response, response_mask=None):
  return lm(embeds=jnp.concatenate([prefix, lm.embed(response)], axis=1),
            key_mask=_key_mask(prefix, response_mask))


@nnx.jit
def _lm_fill_cache(lm, prefix, response, response_mask=None):
  embeds = jnp.concatenate([prefix, lm.embed(response)], axis=1)
  h, cache = lm.hidden(embeds=embeds, key_mask=_key_mask(prefix, response_mask),
                       cache=init_cache(lm.config, *embeds.shape[:2]))
  return lm.logits(h), cache


@nnx.jit
def _lm_suffix(lm, suffix, cache, index):
  return lm.forward(None, suffix, cache=cache, cache_index=index, update_cache=False)[0]


@nnx.jit
def _prefix_embeds(model, prompt, mel):
  return model.prefix_embeds(prompt, mel)


class Forward:
  """The model's forward as a reference loop calls it, over x = [prefix embeds, response tokens].

  With `cache` (Fast-dLLM `generate_with_prefix_cache`): a block's first step is a full forward that
  writes the K/V cache, later steps run x[:, start:] only over the cached prefix. With
  `cache="dual"` (`generate_with_dual_cache`) later steps run x[:, start:end] only, over the cached
  prefix and the cached (stale) suffix. `attention_mask` (LLaDA's, over the response tokens x)
  key-masks the zeros; the cache keeps that mask for the later steps' cached keys. Logits come back
  as a fresh writable array, as a torch model's output.
  """

  def __init__(self, lm, prefix, cache=False):
    self.lm, self.prefix, self.cache, self.kv = lm, prefix, cache, None

  def __call__(self, response, first_in_block=True, start=0, end=None, attention_mask=None):
    response = jnp.asarray(response, jnp.int32)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    if not self.cache:
      return np.array(_lm_full(self.lm, self.prefix, response, mask))
    if first_in_block:
      logits, self.kv = _lm_fill_cache(self.lm, self.prefix, response, mask)
      return np.array(logits)
    p = self.prefix.shape[1]
    stop = end if self.cache == "dual" else response.shape[1]
    logits = _lm_suffix(self.lm, response[:, start:stop], self.kv, p + start)
    out = np.zeros((response.shape[0], p + response.shape[1], logits.shape[-1]), np.float32)
    out[:, p + start:p + stop] = np.asarray(logits)
    return out


def ref_generate(lm, prompt, steps, gen_length, block_length, temperature=0., cfg_scale=0.,
                 remasking="low_confidence", mask_id=MASK, noise=None, threshold=None,
                 cache=False, attention_mask=None, logits_eos_inf=False,
                 confidence_eos_eot_inf=False):
  """LLaDA generate.py (its EOS 126081 / EoT 126348 are the LM config's ids here); `threshold` /
  `cache` as Fast-dLLM's generate(_with_prefix_cache)."""
  eos_id, eot_id = lm.config.eos_id, lm.config.eot_id
  x = np.full((1, prompt.shape[1] + gen_length), mask_id, dtype=np.int64)
  x[:, :prompt.shape[1]] = prompt.copy()

  if attention_mask is not None:
    attention_mask = np.concatenate([attention_mask, np.ones((prompt.shape[0], gen_length),
                                                             dtype=attention_mask.dtype)], axis=-1)

  prompt_index = (x != mask_id)
  forward = Forward(lm, jnp.zeros((2 if cfg_scale > 0 else 1, 0, lm.config.d_model)), cache)
  nfe = 0  # forwards with something to fill: the index of the engine's noise

  assert gen_length % block_length == 0
  num_blocks = gen_length // block_length

  assert steps % num_blocks == 0
  steps = steps // num_blocks

  for num_block in range(num_blocks):
    start = prompt.shape[1] + num_block * block_length
    end = prompt.shape[1] + (num_block + 1) * block_length
    block_mask_index = (x[:, start:end] == mask_id)
    num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
    i = 0
    # LLaDA: `for i in range(steps)`; Fast-dLLM with a threshold: until the block is filled.
    while i < steps if threshold is None else (x[:, start:end] == mask_id).any():
      mask_index = (x == mask_id)
      if cache and i > 0:  # Fast-dLLM: later steps of a block see x[:, start:] only
        mask_index[:, :start] = False
      if not mask_index[:, :end].any():  # a no-op step: skip its forward
        i += 1
        continue
      if cfg_scale > 0.:
        un_x = x.copy()
        un_x[prompt_index] = mask_id
        x_ = np.concatenate([x, un_x], axis=0)
        # (LLaDA leaves `attention_mask_` unbound without a mask, a NameError; here: no mask)
        attention_mask_ = None
        if attention_mask is not None:
          attention_mask_ = np.concatenate([attention_mask, attention_mask], axis=0)
        logits = forward(x_, i == 0, start, end, attention_mask=attention_mask_)
        logits, un_logits = logits[:1], logits[1:]
        logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
      else:
        logits = forward(x, i == 0, start, end, attention_mask=attention_mask)
      g, c = noise(nfe) if noise is not None else (np.full(logits.shape, 0.5), None)
      nfe += 1

      if logits_eos_inf:
        logits[:, :, eos_id] = -np.inf

      logits_with_noise = add_gumbel_noise(logits, temperature=temperature, noise=g)
      x0 = np.argmax(logits_with_noise, axis=-1)  # b, l

      if confidence_eos_eot_inf:
        logits_with_noise[:, :, eos_id] = logits[:, :, eot_id] = -np.inf

      if remasking == 'low_confidence':
        p = softmax64(logits)
        x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]  # b, l
      elif remasking == 'random':
        x0_p = c.copy()
      x0_p[:, end:] = -np.inf

      x0 = np.where(mask_index, x0, x)
      confidence = np.where(mask_index, x0_p, -np.inf)

      transfer_index = np.zeros_like(x0, dtype=bool)
      for j in range(confidence.shape[0]):
        if threshold is None:
          select_index = topk(confidence[j], num_transfer_tokens[j, i])
          transfer_index[j, select_index] = True
        else:  # Fast-dLLM get_transfer_index
          n = int(mask_index[j, :end].sum())
          select_index = topk(confidence[j], n)
          transfer_index[j, select_index] = True
          for k in range(1, n):
            if confidence[j, select_index[k]] < threshold:
              transfer_index[j, select_index[k]] = False
      x[transfer_index] = x0[transfer_index]
      i += 1
  return x


def ref_transcribe(model, mel, prompt, steps, gen_length, block_length, eos_id,
                   mask_id=MASK, cache=False, threshold=None, logits_eos_inf=False,
                   confidence_eos_eot_inf=False):
  """Diffusion-ASR transcribe (batch 1): [prompt, audio, response], with the EOS rule.
  `threshold` / `cache`: Fast-dLLM's rules, as in `ref_generate`; `logits_eos_inf` /
  `confidence_eos_eot_inf`: LLaDA generate's lines at temperature 0, on the LM config's ids."""
  lm_cfg = model.config.lm
  prefix = _prefix_embeds(model, jnp.asarray(prompt), jnp.asarray(mel))
  offset = prefix.shape[1]
  forward = Forward(model.lm, prefix, cache)
  x = np.zeros((1, offset + gen_length), dtype=np.int64)
  x[:, :prompt.shape[1]] = prompt
  x[:, offset:] = mask_id

  early_stop = False
  num_blocks = gen_length // block_length
  steps = steps // num_blocks
  for num_block in range(num_blocks):
    start, end = offset + num_block * block_length, offset + (num_block + 1) * block_length
    block_mask_index = (x[:, start:end] == mask_id)
    num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
    i = 0
    while i < steps if threshold is None else (x[:, start:end] == mask_id).any():
      mask_index = (x == mask_id)
      if not mask_index.any():  # If all tokens are unmasked, we do not need to further denoise
        early_stop = True
        break
      if cache and i > 0:
        mask_index[:, :start] = False
      logits = forward(x[:, offset:], i == 0, start - offset, end - offset)
      if logits_eos_inf:
        logits[:, :, lm_cfg.eos_id] = -np.inf
      x0 = np.argmax(logits, axis=-1)
      if confidence_eos_eot_inf:  # at T = 0 LLaDA's `logits_with_noise` is `logits`
        logits[:, :, lm_cfg.eos_id] = logits[:, :, lm_cfg.eot_id] = -np.inf
      p = softmax64(logits)
      x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]
      x0_p[:, end:] = -np.inf

      x0 = np.where(mask_index, x0, x)
      confidence = np.where(mask_index, x0_p, -np.inf)

      transfer_index = np.zeros_like(x0, dtype=bool)
      if threshold is None:
        transfer_index[0, topk(confidence[0], num_transfer_tokens[0, i])] = True
      else:
        n = int(mask_index[0, :end].sum())
        select_index = topk(confidence[0], n)
        transfer_index[0, select_index[0]] = True
        transfer_index[0, select_index[1:]] = confidence[0, select_index[1:]] >= threshold
      x[transfer_index] = x0[transfer_index]

      # Mask the later part eos once encounter the first eos token id
      if eos_id is not None:
        pos = np.nonzero(transfer_index & (x0 == eos_id))[1]
        if pos.size:
          x[:, pos[0]:] = eos_id
          early_stop = True  # no need to look into the next block
      i += 1
    if early_stop:
      break
  return x[:, offset:]


def ref_correction(model, mel, prompt, supervision_ids, steps, mask_ratio, confidence_based_masking,
                   num_chunks, strategy, key, mask_id=MASK, remasking="low_confidence",
                   temperature=0., cache=False):
  """Diffusion-ASR transcribe_correction (batch 1); `mel=None` drops the audio (text-only)."""
  lm = model.lm
  prefix = _prefix_embeds(model, jnp.asarray(prompt), None if mel is None else jnp.asarray(mel))
  forward = Forward(lm, prefix, cache)
  supervision_ids = supervision_ids.copy()
  gen_length = supervision_ids.shape[1]
  noise = Noise(key, 0, gen_length, 128)
  nfe = 0

  def denoise(response_block, steps):
    nonlocal nfe
    x = response_block.copy()  # the response part of x: the prefix never changes
    num_transfer_tokens = get_num_transfer_tokens(x == mask_id, steps)
    for i in range(steps):
      mask_index = (x == mask_id)
      if not mask_index.any():
        break
      logits = forward(x, i == 0)[:, prefix.shape[1]:]
      g, c = noise(nfe)
      nfe += 1
      x0 = np.argmax(add_gumbel_noise(logits, temperature, g), axis=-1)
      if remasking == 'low_confidence':
        x0_p = np.take_along_axis(softmax64(logits), x0[..., None], -1)[..., 0]
      else:
        x0_p = c.copy()
      x0 = np.where(mask_index, x0, x)
      confidence = np.where(mask_index, x0_p, -np.inf)
      transfer_index = np.zeros_like(x0, dtype=bool)
      if num_transfer_tokens[0, i] > 0:
        transfer_index[0, topk(confidence[0], num_transfer_tokens[0, i])] = True
      x[transfer_index] = x0[transfer_index]
    return x

  if strategy == "diffusion":
    response_block = supervision_ids.copy()
    mask_num_per_seq = int(gen_length * mask_ratio)
    if confidence_based_masking:
      padding_response = np.full((1, gen_length), lm.config.pad_id)
      response_logits = forward(padding_response)[:, prefix.shape[1]:]
      response_probs = softmax64(response_logits)
      token_confidences = np.take_along_axis(response_probs, supervision_ids[..., None], -1)[..., 0]
      low = np.argsort(token_confidences[0], kind="stable")[:mask_num_per_seq]
      response_block[0, low] = mask_id
    else:  # torch.randperm(gen_length)[:k] ≡ the k lowest of i.i.d. uniform scores
      scores = np.asarray(row_uniform(key, 0, MASKING_SCORES, jnp.arange(gen_length)))
      response_block[0, np.argsort(scores, kind="stable")[:mask_num_per_seq]] = mask_id
    steps = min(steps, int((response_block == mask_id).sum()))
    return denoise(response_block, steps) if steps else response_block

  chunk_size = gen_length // num_chunks
  for i in range(num_chunks):
    start_idx = i * chunk_size
    end_idx = gen_length if i == num_chunks - 1 else (i + 1) * chunk_size
    response_block = supervision_ids.copy()
    response_block[:, start_idx:end_idx] = mask_id
    x = denoise(response_block, steps // num_chunks)
    supervision_ids[:, start_idx:end_idx] = x[:, start_idx:end_idx]
  return supervision_ids


# --- generate (LLaDA) ---------------------------------------------------------------------------
GENERATE_MODES = {
    "diffusion": dict(steps=32, gen_length=32, block_length=32),
    "semi_ar_8": dict(steps=16, gen_length=32, block_length=8),
    "semi_ar_16_random": dict(steps=16, gen_length=32, block_length=16, remasking="random"),
    "gumbel": dict(steps=16, gen_length=32, block_length=16, temperature=0.7),
    "cfg": dict(steps=16, gen_length=16, block_length=8, cfg_scale=1.5),
    "threshold": dict(steps=16, gen_length=32, block_length=16, threshold=0.5),
    "cache": dict(steps=16, gen_length=32, block_length=8, cache=True),
    "cache_threshold_gumbel": dict(steps=16, gen_length=32, block_length=16, cache=True,
                                   threshold=0.4, temperature=0.5),
}
DUAL_MODES = {
    "dual_cache": dict(steps=16, gen_length=32, block_length=8, cache="dual"),
    "dual_cache_threshold_cfg": dict(steps=16, gen_length=32, block_length=16, cache="dual",
                                     threshold=0.4, cfg_scale=1.0),
}


def engine_kw(kw):
  """A reference mode's keywords as the engine takes them (cache="dual" → dual_cache=True)."""
  return {**kw, "cache": bool(kw.get("cache")), "dual_cache": kw.get("cache") == "dual"}


@pytest.mark.parametrize("mode", list(GENERATE_MODES))
def test_generate_matches_llada_reference(lm, mode):
  kw = GENERATE_MODES[mode]
  prompts = np.asarray(jax.random.randint(jax.random.key(3), (2, 6), 0, 126))
  out = np.asarray(generate(lm, prompts, mask_id=MASK, key=KEYS[:2], **engine_kw(kw)))
  assert out.shape == (2, 6 + kw["gen_length"]) and out.dtype == np.int32
  # (with CFG the tiny model proposes the mask token itself: left-over masks are compared too)
  for row in range(2):
    noise = Noise(KEYS[row], 6, kw["gen_length"], 128)
    want = ref_generate(lm, prompts[row:row + 1], noise=noise, **kw)
    np.testing.assert_array_equal(out[row:row + 1], want, err_msg=f"{mode}, row {row}")


@pytest.mark.parametrize("mode", list(DUAL_MODES))
def test_dual_cache_matches_reference_and_differs_from_prefix_cache(mode):
  """Fast-dLLM dual cache: token-exact vs the reference; the stale suffix K/V it reads must
  change some tokens against the prefix cache (else this test could not tell them apart)."""
  lm = scaled(Transformer(LMConfig.tiny_test(), rngs=nnx.Rngs(1)), 3.0)  # varied outputs
  kw = DUAL_MODES[mode]
  prompts = np.asarray(jax.random.randint(jax.random.key(3), (2, 6), 0, 126))
  out = np.asarray(generate(lm, prompts, mask_id=MASK, **engine_kw(kw)))
  prefix_only = np.asarray(generate(lm, prompts, mask_id=MASK, **{**kw, "cache": True}))
  assert (out != prefix_only).any()
  for row in range(2):
    want = ref_generate(lm, prompts[row:row + 1], **kw)
    np.testing.assert_array_equal(out[row:row + 1], want, err_msg=f"{mode}, row {row}")


# LLaDA Appendix B.4 options, with EOS and EoT ids that the tiny LM proposes often (else they
# would change nothing).
EOS_EOT_MODES = {
    "logits_eos_inf": dict(steps=16, gen_length=32, block_length=16, logits_eos_inf=True),
    "confidence_eos_eot_inf": dict(steps=16, gen_length=32, block_length=16,
                                   confidence_eos_eot_inf=True),
    "confidence_eos_eot_inf_gumbel": dict(steps=16, gen_length=32, block_length=16,
                                          temperature=0.7, confidence_eos_eot_inf=True),
    "both_gumbel_cfg": dict(steps=8, gen_length=16, block_length=8, temperature=0.5,
                            cfg_scale=1.0, logits_eos_inf=True, confidence_eos_eot_inf=True),
}


def frequent_ids(tokens):
  """The two most frequent ids of `tokens`, most frequent first."""
  ids, counts = np.unique(np.asarray(tokens), return_counts=True)
  return [int(i) for i in ids[np.argsort(-counts, kind="stable")[:2]]]


@pytest.fixture(scope="module")
def lm_eos_eot(lm):
  """`lm`'s weights, with EOS / EoT set to the two tokens that it generates most."""
  prompts = jax.random.randint(jax.random.key(3), (2, 6), 0, 126)
  out = generate(lm, prompts, mask_id=MASK, steps=16, gen_length=32, block_length=16)[:, 6:]
  eos, eot = frequent_ids(out)
  model = Transformer(LMConfig.tiny_test(eos_id=eos, eot_id=eot), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(lm))
  return model


@pytest.mark.parametrize("mode", list(EOS_EOT_MODES))
def test_eos_eot_inf_match_llada_reference(lm_eos_eot, mode):
  kw = EOS_EOT_MODES[mode]
  lm = lm_eos_eot
  prompts = np.asarray(jax.random.randint(jax.random.key(3), (2, 6), 0, 126))
  out = np.asarray(generate(lm, prompts, mask_id=MASK, key=KEYS[:2], **engine_kw(kw)))
  off = {k: v for k, v in kw.items() if not k.endswith("_inf")}
  assert (out != np.asarray(generate(lm, prompts, mask_id=MASK, key=KEYS[:2],
                                     **engine_kw(off)))).any()  # the option matters here
  if kw.get("logits_eos_inf"):
    assert (out[:, 6:] != lm.config.eos_id).all()
  for row in range(2):
    noise = Noise(KEYS[row], 6, kw["gen_length"], 128)
    want = ref_generate(lm, prompts[row:row + 1], noise=noise, **kw)
    np.testing.assert_array_equal(out[row:row + 1], want, err_msg=f"{mode}, row {row}")


def test_confidence_eos_eot_inf_follows_llada_aliasing(lm_eos_eot):
  """At T = 0 LLaDA's `logits_with_noise` *is* `logits`, so EOS and EoT both leave the confidence
  softmax; at T > 0 only EoT does. Removing EOS at T > 0 too changes this test's tokens, so the
  reference comparison above tells the two readings apart."""
  lm = lm_eos_eot
  eos, eot = lm.config.eos_id, lm.config.eot_id
  assert _eos_eot_inf(eos, eot, 0.0, False, True) == dict(logits_inf=(), confidence_inf=(eos, eot))
  assert _eos_eot_inf(eos, eot, 0.7, False, True) == dict(logits_inf=(), confidence_inf=(eot,))
  assert _eos_eot_inf(eos, eot, 0.7, True, False) == dict(logits_inf=(eos,), confidence_inf=())
  kw = EOS_EOT_MODES["confidence_eos_eot_inf_gumbel"]
  prompts = jax.random.randint(jax.random.key(3), (2, 6), 0, 126)
  out = generate(lm, prompts, mask_id=MASK, key=KEYS[:2], **kw)
  rules = StepRules(remasking="low_confidence", temperature=kw["temperature"], threshold=None,
                    cache=False, mask_id=MASK, confidence_inf=(eos, eot))
  sched = Blocks.from_lengths(rules, gen_length=32, block_length=16, steps=16)
  both = _generate(*nnx.split(lm), prompts, jnp.ones(prompts.shape, bool), KEYS[:2],
                   sched=sched, gen_length=32)
  assert (np.asarray(out) != np.asarray(both)).any()


# LLaDA `main()`: prompts left-padded with the pad id, and the tokenizer's attention mask.
# (mode, whether each row is also decoded alone: compiles per prompt length, so only in two modes)
PAD_MODES = {
    "plain": (dict(steps=16, gen_length=16, block_length=8), True),
    "cfg_gumbel_random": (dict(steps=16, gen_length=16, block_length=8, cfg_scale=1.5,
                               temperature=0.7, remasking="random"), False),
    "cache": (dict(steps=8, gen_length=16, block_length=8, cache=True), True),
    "dual_cache_cfg": (dict(steps=8, gen_length=16, block_length=8, cache="dual", cfg_scale=1.0),
                       False),
}


@pytest.fixture(scope="module")
def padded_prompts(lm):
  """Prompts of 6, 3 and 4 tokens left-padded to 6 with the pad id; their 0/1 mask."""
  lens = (6, 3, 4)
  raw = np.asarray(jax.random.randint(jax.random.key(11), (3, 6), 3, 120))
  ids = np.full((3, 6), lm.config.pad_id)
  mask = np.zeros((3, 6), np.int32)
  for row, n in enumerate(lens):
    ids[row, 6 - n:] = raw[row, :n]
    mask[row, 6 - n:] = 1
  return ids, mask, raw, lens


@pytest.mark.parametrize("mode", list(PAD_MODES))
def test_left_padded_batch_matches_reference_and_rows_alone(lm, padded_prompts, mode):
  """Token-exact vs the reference loop given each row's mask (CFG doubles it; the caches keep it);
  and each row gives the tokens it gives alone, unpadded. Positions run 0..L−1 over the padded
  sequence, as in LLaDA's model: RoPE scores depend only on position differences, so a row and its
  unpadded self agree up to float rounding, which the tiny model's peaked logits never feel."""
  ids, mask, raw, lens = padded_prompts
  kw, check_alone = PAD_MODES[mode]
  given = mask.astype(bool) if kw.get("cache") else mask  # 0/1 or bool
  out = np.asarray(generate(lm, ids, given, mask_id=MASK, key=KEYS[:3], **engine_kw(kw)))
  seen = np.asarray(generate(lm, ids, mask_id=MASK, key=KEYS[:3], **engine_kw(kw)))
  assert (out != seen).any()  # the padding matters when it is attended
  for row, n in enumerate(lens):
    noise = Noise(KEYS[row], 6, kw["gen_length"], 128)
    want = ref_generate(lm, ids[row:row + 1], noise=noise, attention_mask=mask[row:row + 1], **kw)
    np.testing.assert_array_equal(out[row:row + 1], want, err_msg=f"{mode}, row {row}")
    if not check_alone:
      continue
    alone = np.asarray(generate(lm, raw[row:row + 1, :n], mask_id=MASK, key=KEYS[row:row + 1],
                                **engine_kw(kw)))
    np.testing.assert_array_equal(out[row, 6:], alone[0, n:], err_msg=f"{mode}, row {row} alone")


def test_attention_mask_is_checked(lm):
  prompts = jnp.zeros((2, 6), jnp.int32)
  with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 6\)"):
    generate(lm, prompts, jnp.ones((2, 5), jnp.int32), mask_id=MASK, steps=8, gen_length=8,
             block_length=8)


def test_modes_differ_and_keys_are_deterministic(lm):
  prompts = jax.random.randint(jax.random.key(3), (2, 6), 0, 126)
  kw = dict(steps=16, gen_length=32, block_length=16, remasking="random")
  a = np.asarray(generate(lm, prompts, mask_id=MASK, key=KEYS[:2], **kw))
  b = np.asarray(generate(lm, prompts, mask_id=MASK, key=KEYS[:2], **kw))
  c = np.asarray(generate(lm, prompts, mask_id=MASK, key=jax.random.key(8), **kw))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  greedy_out = np.asarray(generate(lm, prompts, mask_id=MASK, steps=16, gen_length=32,
                                   block_length=16))
  assert (a != greedy_out).any()


def test_gumbel_argmax_equals_float64_formula():
  """Log-space float32 Gumbel-max picks the token of LLaDA's float64 `exp(l) / (-log u) ** T`."""
  logits = 3 * jax.random.normal(jax.random.key(0), (64, 512))
  u = jax.random.uniform(jax.random.key(1), (64, 512))
  for temperature in (0.0, 0.3, 1.0, 2.0):
    got = np.asarray(gumbel_argmax(logits, u, temperature))
    want = np.argmax(add_gumbel_noise(np.asarray(logits), temperature, np.asarray(u)), -1)
    np.testing.assert_array_equal(got, want)


# --- Whisper-LLaDA decoding ---------------------------------------------------------------------
def check_decode(model, audio, settings, eos_id):
  mel, prompt = audio
  out = np.asarray(decode(model, mel, prompt, settings=settings))
  assert out.shape == (4, settings.gen_length) and out.dtype == np.int32
  for row in range(4):
    want = ref_transcribe(model, mel[row:row + 1], np.asarray(prompt[row:row + 1]),
                          settings.steps, settings.gen_length, settings.block_length, eos_id=eos_id,
                          cache="dual" if settings.dual_cache else settings.cache,
                          threshold=settings.threshold, logits_eos_inf=settings.logits_eos_inf,
                          confidence_eos_eot_inf=settings.confidence_eos_eot_inf)
    np.testing.assert_array_equal(out[row:row + 1], want, err_msg=f"{settings}, row {row}")
  return out


DECODE_CACHED = DiffusionSettings(gen_length=16, steps=16, block_length=8, cache=True,
                                  threshold=0.3)


def test_decode_diffusion_matches_transcribe_reference(llada, audio):
  check_decode(llada, audio, DiffusionSettings(gen_length=16, steps=16, block_length=16),
               llada.config.lm.eos_id)


@pytest.mark.parametrize("dual", [False, True], ids=["prefix", "dual"])
def test_decode_cache_and_threshold_match_reference(llada, audio, dual):
  settings = dataclasses.replace(DECODE_CACHED, dual_cache=dual)
  check_decode(llada, audio, settings, llada.config.lm.eos_id)


def test_eos_rule(llada, audio):
  """Semi-AR decoding with an EOS id that the model commits mid-response: the row is EOS from there
  on and decoding stops, as in Diffusion-ASR; without the rule the row goes on differently."""
  mel, prompt = audio
  free = ref_transcribe(llada, mel[:1], np.asarray(prompt[:1]), 16, 16, 8, eos_id=None)[0]
  eos = next(int(t) for t in free[2:10] if t not in np.asarray(prompt[0]) and t != 0)
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(eos_id=eos), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(llada))  # same weights, another EOS id
  out = check_decode(model, audio, DiffusionSettings(gen_length=16, steps=16, block_length=8), eos)
  first = int(np.argmax(out[0] == eos))
  assert first < 10 and (out[0, first:] == eos).all()
  assert (free[first:] != eos).any()


def test_decode_eos_eot_inf_match_reference(llada, audio):
  """`DiffusionSettings` carries generate's Appendix B.4 options (with the EOS rule on, which
  `logits_eos_inf` silences); EOS and EoT are set to the two tokens the model transcribes most, so
  that the options matter."""
  mel, prompt = audio
  settings = DiffusionSettings(gen_length=16, steps=16, block_length=8)
  eos, eot = frequent_ids(decode(llada, mel, prompt,
                                 settings=dataclasses.replace(settings, eos_rule=False)))
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(eos_id=eos, eot_id=eot), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(llada))
  options = dataclasses.replace(settings, logits_eos_inf=True, confidence_eos_eot_inf=True)
  out = check_decode(model, audio, options, eos)
  assert (out != np.asarray(decode(model, mel, prompt, settings=settings))).any()


def test_cache_with_one_step_per_block_is_exact(lm):
  """With one step per block every step is a full forward, so the cache changes nothing."""
  prompts = jax.random.randint(jax.random.key(3), (2, 6), 0, 126)
  kw = dict(steps=4, gen_length=32, block_length=8, mask_id=MASK)
  np.testing.assert_array_equal(generate(lm, prompts, cache=True, **kw),
                                generate(lm, prompts, **kw))


def test_compiles_once_and_logs_it(lm, caplog):
  prompts = jax.random.randint(jax.random.key(4), (3, 5), 0, 126)  # shapes no other test uses
  kw = dict(steps=8, gen_length=8, block_length=8, mask_id=MASK)
  with caplog.at_level(logging.INFO, logger="llada_jax.decoding.diffusion"):
    first = generate(lm, prompts, **kw)
    again = generate(lm, prompts[::-1], **kw)
  logged = [r.getMessage() for r in caplog.records if "compiling LLaDA generate" in r.getMessage()]
  assert len(logged) == 1 and "batch 3, prompt 5, gen_length 8" in logged[0]
  np.testing.assert_array_equal(again, first[::-1])


# --- deliberation -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hypotheses():
  """Hypotheses of lengths 13, 21, 3 and 24, right-padded to a bucket of 24 with arbitrary ids."""
  hyp = np.asarray(jax.random.randint(jax.random.key(5), (4, 24), 2, 120), np.int32)
  return hyp, np.array([13, 21, 3, 24], np.int32)


DELIBERATION_MODES = {
    "semi_ar": (DeliberationSettings(steps=8, num_chunks=4), True),
    "semi_ar_random_remasking_cache": (DeliberationSettings(steps=8, num_chunks=4,
                                                            remasking="random", cache=True), True),
    "diffusion_random": (DeliberationSettings(strategy="diffusion", steps=16, mask_ratio=0.5),
                         True),
    "diffusion_low_confidence": (DeliberationSettings(
        strategy="diffusion", masking="low_confidence", steps=4, mask_ratio=0.5,
        temperature=0.8), True),
    "text_only_diffusion_low_confidence": (DeliberationSettings(
        strategy="diffusion", masking="low_confidence", steps=16, mask_ratio=0.4), False),
}


@pytest.mark.parametrize("mode", list(DELIBERATION_MODES))
def test_deliberate_matches_correction_reference(llada, audio, hypotheses, mode):
  settings, with_audio = DELIBERATION_MODES[mode]
  mel, prompt = audio
  hyp, lens = hypotheses
  out = np.asarray(deliberate(llada, mel if with_audio else None, prompt, hyp, lens,
                              settings=settings, key=KEYS))
  assert out.shape == hyp.shape
  for row, n in enumerate(lens):
    want = ref_correction(
        llada, mel[row:row + 1] if with_audio else None, np.asarray(prompt[row:row + 1]),
        hyp[row:row + 1, :n], settings.steps, settings.mask_ratio,
        settings.masking == "low_confidence", settings.num_chunks, settings.strategy, KEYS[row],
        remasking=settings.remasking, temperature=settings.temperature, cache=settings.cache)
    np.testing.assert_array_equal(out[row, :n], want[0], err_msg=f"{mode}, row {row}")
    np.testing.assert_array_equal(out[row, n:], hyp[row, n:])  # padding never changes
  assert (out != hyp).any()


def test_deliberation_row_ignores_padding_and_batch(llada, audio, hypotheses):
  """A row gives the same tokens at another batch position, beside other rows, with other
  padding."""
  mel, prompt = audio
  hyp, lens = hypotheses
  settings = DELIBERATION_MODES["diffusion_random"][0]
  batch = np.asarray(deliberate(llada, mel, prompt, hyp, lens, settings=settings, key=KEYS))
  order = [1, 3, 0, 2]
  other = hyp[order].copy()
  other[0, lens[1]:] = 1  # row 1, now first, padded with other ids
  other[1] = other[1, ::-1]  # a different companion row
  moved = np.asarray(deliberate(llada, mel[np.array(order)], prompt, other, lens[order],
                                settings=settings, key=KEYS[np.array(order)]))
  np.testing.assert_array_equal(moved[0, :lens[1]], batch[1, :lens[1]])
  np.testing.assert_array_equal(moved[2], batch[0])
  again = np.asarray(deliberate(llada, mel, prompt, hyp, lens, settings=settings, key=KEYS))
  np.testing.assert_array_equal(again, batch)  # deterministic for a key


# --- greedy AR baseline -------------------------------------------------------------------------
def test_ar_greedy_matches_full_forward_loop(llada, audio):
  """Cached greedy = argmax of full forwards, step by step (a causal LM's logit at t ignores what
  follows t, so the reference fills a fixed-size buffer)."""
  mel, prompt = audio
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(causal=True), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(llada))
  n = 10
  out = np.asarray(greedy(model, mel, prompt, max_new_tokens=n))
  eos = int(out[0, 4])  # the same run with an EOS that row 0 emits early
  stopped = np.asarray(greedy(model, mel, prompt, max_new_tokens=n, eos_id=eos))
  for tokens, eos_id in ((out, model.config.lm.eos_id), (stopped, eos)):
    for row in range(4):
      prefix = _prefix_embeds(model, prompt[row:row + 1], mel[row:row + 1])
      ids = np.zeros((1, n), np.int32)
      done = False
      for t in range(n):
        logits = _lm_full(model.lm, prefix, jnp.asarray(ids))[0, prefix.shape[1] + t - 1]
        ids[0, t] = eos_id if done else int(np.argmax(logits))
        done |= ids[0, t] == eos_id
      np.testing.assert_array_equal(tokens[row], ids[0], err_msg=f"row {row}, eos {eos_id}")
  assert (stopped[0, 4:] == eos).all() and (out[0, 5:] != eos).any()


# --- sharding -----------------------------------------------------------------------------------
def test_sharded_equals_single_device(llada, audio, hypotheses):
  """fsdp × tensor × data mesh of 8 devices: the same tokens as one device (decode with the prefix
  cache and threshold, deliberation with low-confidence masking)."""
  assert jax.device_count() >= 8, "conftest sets 8 simulated CPU devices"
  mel, prompt = audio
  hyp, lens = hypotheses
  delib = DELIBERATION_MODES["diffusion_low_confidence"][0]
  want_dec = np.asarray(decode(llada, mel, prompt, settings=DECODE_CACHED))
  want_del = np.asarray(deliberate(llada, mel, prompt, hyp, lens, settings=delib, key=KEYS))

  mesh = sharding.make_mesh((2, 2, 2))
  rules = sharding.ShardingConfig.full_fsdp()
  model = sharding.shard_model(nnx.clone(llada), mesh, rules)
  assert model.lm.layers.mlp.gate_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")
  put = lambda x: jax.device_put(jnp.asarray(x), sharding.batch_sharding(mesh, rules, x.shape))
  with sharding.use(mesh, rules):
    got_dec = decode(model, put(mel), put(prompt), settings=DECODE_CACHED)
    got_del = deliberate(model, put(mel), put(prompt), put(hyp), put(lens), settings=delib,
                         key=KEYS)
  np.testing.assert_array_equal(np.asarray(got_dec), want_dec)
  np.testing.assert_array_equal(np.asarray(got_del), want_del)


# --- small pieces -------------------------------------------------------------------------------
def test_adaptive_gen_length():
  assert adaptive_gen_length(3.0) == 32  # 15 tokens
  assert adaptive_gen_length([2.0, 7.0]) == 64  # the longest row decides: 35 tokens
  assert adaptive_gen_length(18.0) == 96
  assert adaptive_gen_length(40.0) == 128  # capped at the largest bucket
  assert adaptive_gen_length(7.0, multiple_of=64) == 64
  assert adaptive_gen_length(14.0, tokens_per_second=4.0, multiple_of=64) == 64
  with pytest.raises(ValueError, match="multiple of 256"):
    adaptive_gen_length(1.0, multiple_of=256)


def test_settings_are_validated():
  with pytest.raises(ValueError, match="not a multiple of block_length"):
    DiffusionSettings(gen_length=32, block_length=24)
  with pytest.raises(ValueError, match="not a multiple of the 4 blocks"):
    DiffusionSettings(gen_length=32, block_length=8, steps=10)
  with pytest.raises(ValueError, match="remasking"):
    DiffusionSettings(remasking="top_k")
  with pytest.raises(ValueError, match="set cache=True too"):
    DiffusionSettings(dual_cache=True)
  with pytest.raises(ValueError, match="steps 2 ≥ num_chunks 4"):
    DeliberationSettings(steps=2)
  with pytest.raises(ValueError, match="strategy"):
    DeliberationSettings(strategy="ar")
