"""Denoising schedules: the three published ways to walk a masked response, one class each.

A schedule says which positions a block covers, what entering and leaving a block does, which
masks a step may fill and how many steps it gets; the engine (`diffusion._denoise`) runs any of
them through the `Schedule` protocol. A new variant is a new class here, not another branch in
the engine. Schedules are jit static arguments: frozen dataclasses, hashable and compared by
value, so each distinct setting compiles once.

Arrays: tokens and valid [B, R] (R: the response bucket; `valid` marks real positions), length
[B] (= valid.sum(1)), block and step [] int32 (blocks advance in lockstep over the batch).
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp

from llada_jax.decoding.scores import MASKING_SCORES, batch_uniform, mask_hypothesis, probability


@dataclasses.dataclass(frozen=True)
class StepRules:
  """What every step does, whatever the schedule: propose, score and commit tokens."""

  remasking: str  # "low_confidence" (the proposal's probability) or "random" (uniform scores)
  temperature: float  # 0: argmax; > 0: Gumbel-max (LLaDA `add_gumbel_noise`)
  threshold: float | None  # Fast-dLLM parallel decoding: also commit every token ≥ threshold
  cache: bool  # Fast-dLLM prefix KV cache, rewritten by each block's first step
  mask_id: int
  eos_id: int | None = None  # Diffusion-ASR EOS rule: everything after a committed EOS is EOS
  cfg_scale: float = 0.0  # LLaDA classifier-free guidance (generate only)
  # Token ids whose logits are −∞ before the proposal (argmax / Gumbel-max) and therefore in the
  # confidence too: LLaDA `logits_eos_inf` (Appendix B.4).
  logits_inf: tuple[int, ...] = ()
  # Token ids whose logits are −∞ in the low-confidence softmax only, after the proposal: LLaDA
  # `confidence_eos_eot_inf` (which ids depends on the temperature: see `diffusion._eos_eot_inf`).
  confidence_inf: tuple[int, ...] = ()


class Schedule(tp.Protocol):
  """How a denoising run walks the response (see the module docstring for array shapes)."""

  rules: StepRules

  @property
  def num_blocks(self) -> int:
    """The run ends when the block counter reaches this."""

  @property
  def max_offset(self) -> int:
    """Furthest start of a cached step's window after the prefix (cache slots past R)."""

  @property
  def window(self) -> int | None:
    """Width of a cached step's window; None: R wide, from `window_start` on."""

  def window_start(self, block: jax.Array) -> jax.Array:
    """[] int32: response position where a cached step's window starts."""

  def start(self, lm, prefix: jax.Array, tokens: jax.Array, valid: jax.Array,
            length: jax.Array, keys: jax.Array) -> jax.Array:
    """The response as denoising begins (tokens with masks placed)."""

  def enter(self, tokens: jax.Array, block: jax.Array, length: jax.Array,
            valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Start `block` → (tokens, [B] masks to spread over its steps, [B] step cap)."""

  def candidates(self, tokens: jax.Array, block: jax.Array, step: jax.Array, length: jax.Array,
                 valid: jax.Array) -> jax.Array:
    """[B, R] bool: masked positions that this step may commit."""

  def work(self, tokens: jax.Array, block: jax.Array, step: jax.Array, length: jax.Array,
           valid: jax.Array) -> jax.Array:
    """[B, R] bool: masks that keep a row stepping in this block (until its step cap)."""

  def final(self, block: jax.Array) -> jax.Array:
    """[] bool: no later block adds masks, so a row with none left is done."""

  def leave(self, tokens: jax.Array, anchor: jax.Array, block: jax.Array, length: jax.Array,
            valid: jax.Array) -> jax.Array:
    """Tokens as `block` ends; `anchor`: the tokens when it was entered."""


def _between(valid, start, end):
  pos = jnp.arange(valid.shape[1])
  return valid & (pos >= start[:, None]) & (pos < end[:, None])


@dataclasses.dataclass(frozen=True)
class Blocks:
  """LLaDA's semi-autoregressive blocks (ML-GSAI/LLaDA `generate.py::generate`).

  The response of masks is cut into `num_blocks` blocks of `block_length`, filled left to right,
  `steps` steps each (`steps // num_blocks` of the call); a block's masks are spread over its steps
  by `get_num_transfer_tokens`. Confidence is −∞ only *beyond* the block, so a mask left over from
  an earlier block (the model proposed the mask token itself) competes again. Diffusion-ASR's
  standalone `transcribe` is this schedule with the EOS rule: one block of gen_length for
  "diffusion", several for "semi-AR".

  Fast-dLLM options: with the prefix cache a block's first step writes the K/V and later steps
  run only [block start, end of response) (an R-wide window, so the cache has `max_offset` spare
  slots), and see only masks from the block start; with the dual cache (`dual_cache`) they run the
  block alone, reading the still-masked suffix's K/V written by the block's first step (stale, as
  in Fast-dLLM). With a threshold, a block is stepped while it has masks (Fast-dLLM's
  `while (x[:, block] == mask_id).any()`), not for a fixed count.
  """

  rules: StepRules
  num_blocks: int
  block_length: int
  steps: int  # per block
  dual_cache: bool = False

  @classmethod
  def from_lengths(cls, rules: StepRules, *, gen_length: int, block_length: int, steps: int,
                   dual_cache: bool = False) -> Blocks:
    """LLaDA's arguments: `steps` for the whole response, split evenly over its blocks."""
    num_blocks = gen_length // block_length
    return cls(rules=rules, num_blocks=num_blocks, block_length=block_length,
               steps=steps // num_blocks, dual_cache=dual_cache)

  @property
  def max_offset(self) -> int:
    return (self.num_blocks - 1) * self.block_length

  @property
  def window(self) -> int | None:
    return self.block_length if self.dual_cache else None

  def window_start(self, block):
    return jnp.minimum(block, self.num_blocks - 1) * self.block_length

  def _bounds(self, block, length):
    start = jnp.broadcast_to(block * self.block_length, length.shape)
    return start, start + self.block_length

  def start(self, lm, prefix, tokens, valid, length, keys):
    return tokens  # the caller's response is all masks

  def enter(self, tokens, block, length, valid):
    # `get_num_transfer_tokens(block_mask_index, steps)`: the masks of this block only.
    inside = _between(valid, *self._bounds(block, length))
    masks = valid & (tokens == self.rules.mask_id)
    masked = jnp.sum(masks & inside, axis=1).astype(jnp.int32)
    return tokens, masked, jnp.full_like(masked, self.steps)

  def candidates(self, tokens, block, step, length, valid):
    masks = valid & (tokens == self.rules.mask_id)
    start, end = self._bounds(block, length)
    pos = jnp.arange(tokens.shape[1])
    cand = masks & (pos < end[:, None])  # `x0_p[:, block end:] = -np.inf`
    if self.rules.cache:  # Fast-dLLM: a cached step's logits start at the block
      cand &= (pos >= start[:, None]) | (step == 0)
    return cand

  def work(self, tokens, block, step, length, valid):
    if self.rules.threshold is not None:
      return _between(valid, *self._bounds(block, length)) & (tokens == self.rules.mask_id)
    return self.candidates(tokens, block, step, length, valid)

  def final(self, block):
    return block >= 0  # every block's masks are there from the start

  def leave(self, tokens, anchor, block, length, valid):
    return tokens


@dataclasses.dataclass(frozen=True)
class SubBlocks:
  """Semi-AR deliberation (Diffusion-ASR `models/WhisperLLaDA.py::transcribe_correction`,
  strategy "semi_ar").

  The first-pass hypothesis of length L is cut into `num_chunks` sub-blocks of L // num_chunks
  (the last takes the remainder). Left to right, each is fully masked on entry, with the corrected
  earlier sub-blocks and the original later ones visible, and denoised for `steps` steps
  (`steps // num_chunks` of the call); the commit counts come from the masks of the whole
  response, as in their code. Any mask may be committed (no block restriction). On leaving, only
  the sub-block is copied back (`supervision_ids[:, start:end] = x[...]`), so a left-over mask
  elsewhere that its steps filled reverts. A row with no mask left is done only after its last
  sub-block. With the cache, prompt + audio K/V are written by each sub-block's first step and
  later steps run the whole response over them.
  """

  rules: StepRules
  num_chunks: int
  steps: int  # per sub-block
  max_offset = 0
  window = None

  @property
  def num_blocks(self) -> int:
    return self.num_chunks

  def window_start(self, block):
    return 0

  def _bounds(self, block, length):
    size = length // self.num_chunks  # chunk_size = L // num_chunks
    start = block * size
    return start, jnp.where(block == self.num_chunks - 1, length, start + size)

  def start(self, lm, prefix, tokens, valid, length, keys):
    return tokens  # each sub-block is masked as it is entered

  def enter(self, tokens, block, length, valid):
    inside = _between(valid, *self._bounds(block, length))
    tokens = jnp.where(inside & (block < self.num_chunks), self.rules.mask_id, tokens)
    masked = jnp.sum(valid & (tokens == self.rules.mask_id), axis=1).astype(jnp.int32)
    return tokens, masked, jnp.full_like(masked, self.steps)

  def candidates(self, tokens, block, step, length, valid):
    return valid & (tokens == self.rules.mask_id)

  def work(self, tokens, block, step, length, valid):
    return self.candidates(tokens, block, step, length, valid)

  def final(self, block):
    return block >= self.num_chunks - 1  # later sub-blocks will be masked

  def leave(self, tokens, anchor, block, length, valid):
    return jnp.where(_between(valid, *self._bounds(block, length)), tokens, anchor)


@dataclasses.dataclass(frozen=True)
class MaskedSubset:
  """Diffusion deliberation (Diffusion-ASR `transcribe_correction`, strategy "diffusion").

  k = int(L · mask_ratio) hypothesis tokens are masked up front: the k least probable under one
  forward with the response filled with pad tokens (the model must not see the answer;
  "low_confidence"), or `randperm(L)[:k]` ("random", here the k lowest of L uniform scores). Then
  one block over the whole response is denoised for min(steps, k) steps; any mask may be
  committed. With the cache, prompt + audio K/V are written by the first step.
  """

  rules: StepRules
  steps: int  # a cap: min(steps, masked count) per row
  masking: str  # "random" or "low_confidence"
  mask_ratio: float
  num_blocks = 1
  max_offset = 0
  window = None

  def window_start(self, block):
    return 0

  def start(self, lm, prefix, tokens, valid, length, keys):
    b = prefix.shape[0]
    r = tokens.shape[1]
    counts = tuple(int(n * self.mask_ratio) for n in range(r + 1))  # Python's int(L * ratio)
    counts = jnp.asarray(counts, jnp.int32)[length]
    if self.masking == "low_confidence":
      pads = jnp.full_like(tokens, lm.config.pad_id)
      logits, _ = lm.forward(prefix, pads, response_mask=valid)
      scores = probability(logits, tokens)
    else:
      scores = batch_uniform(keys, jnp.zeros((b,), jnp.int32), MASKING_SCORES, jnp.arange(r))
    return jnp.where(mask_hypothesis(scores, length, counts), self.rules.mask_id, tokens)

  def enter(self, tokens, block, length, valid):
    # Their num_transfer_tokens counts the masks of the whole response.
    masked = jnp.sum(valid & (tokens == self.rules.mask_id), axis=1).astype(jnp.int32)
    return tokens, masked, jnp.minimum(self.steps, masked)  # steps = min(steps, masked)

  def candidates(self, tokens, block, step, length, valid):
    return valid & (tokens == self.rules.mask_id)

  def work(self, tokens, block, step, length, valid):
    return self.candidates(tokens, block, step, length, valid)

  def final(self, block):
    return block >= 0

  def leave(self, tokens, anchor, block, length, valid):
    return tokens
