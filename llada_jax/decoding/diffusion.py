"""Masked-diffusion decoding: LLaDA's `generate`, Whisper-LLaDA transcription and deliberation.

Every call is one jitted `lax.while_loop`; each iteration is one forward over
`[prefix embeds, response embeds]` (prefix = prompt, + audio for speech) and commits some of the
masked response tokens. The rules follow the published code exactly:

- LLaDA `generate.py`: per block, `n // steps` tokens per step, the remainder `n % steps` one each
  to the earliest steps; confidence −∞ beyond the current block and on committed positions; the
  committed tokens are the top-k by confidence (ties: lower position first, as `lax.top_k`).
  Its options: a prompt `attention_mask` (left-padded batches), `logits_eos_inf` and
  `confidence_eos_eot_inf` (LLaDA Appendix B.4), classifier-free guidance.
- Diffusion-ASR `models/WhisperLLaDA.py::transcribe`: once an EOS is committed at position j,
  positions j.. are all EOS; a row with no mask left is done.
- Diffusion-ASR `transcribe_correction` (deliberation): see `deliberate`.
- Fast-dLLM (options, off by default): confidence-threshold commits, a prefix KV cache and the dual
  cache (the masked suffix's K/V cached too, so a cached step runs the current block alone).

Which positions each block covers and how many steps it gets is a `schedules.Schedule` (LLaDA
blocks, deliberation sub-blocks, masked-subset deliberation); this module holds the settings, the
engine that runs any schedule, and the entry points that pick one.

Blocks advance in lockstep over the batch (a row that finished its block waits, committing
nothing), because a prefix cache is shared by the batch. Waiting never changes a row's tokens, and
each row's noise is indexed by its own count of forwards, so a row's output does not depend on the
other rows of the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import typing as tp

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.decoding.schedules import Blocks, MaskedSubset, Schedule, StepRules, SubBlocks
from llada_jax.decoding.scores import (
  CONFIDENCE,
  GUMBEL,
  batch_uniform,
  gumbel_argmax,
  probability,
  rank,
  row_keys,
)
from llada_jax.models.layers import check_array
from llada_jax.models.transformer import KVCache, Transformer, init_cache

log = logging.getLogger(__name__)

REMASKING = ("low_confidence", "random")
STRATEGIES = ("semi_ar", "diffusion")
MASKING = ("random", "low_confidence")


def _check_common(owner: str, remasking: str, temperature: float, threshold: float | None):
  if remasking not in REMASKING:
    raise ValueError(f"{owner}.remasking={remasking!r}: expected one of {REMASKING}")
  if temperature < 0:
    raise ValueError(f"{owner}.temperature={temperature}: expected ≥ 0")
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise ValueError(f"{owner}.threshold={threshold}: expected None or a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DiffusionSettings:
  """Standalone Whisper-LLaDA decoding. Paper: gen 128, steps 128, block 128 (diffusion) or 64/32
  (semi-AR), low-confidence remasking, temperature 0, EOS rule on, no cache, no threshold."""

  # None (a Transcriber's settings only): the checkpoint's response length, steps = gen_length,
  # and one block of gen_length; `decode` needs them resolved.
  gen_length: int | None = 128
  steps: int | None = 128
  block_length: int | None = 128
  remasking: str = "low_confidence"
  temperature: float = 0.0
  eos_rule: bool = True  # Diffusion-ASR: everything after a committed EOS becomes EOS
  threshold: float | None = None  # Fast-dLLM parallel decoding (not in the paper)
  cache: bool = False  # Fast-dLLM prefix KV cache, refreshed per block (not in the paper)
  dual_cache: bool = False  # Fast-dLLM dual cache: the suffix after the block is cached too
  logits_eos_inf: bool = False  # LLaDA Appendix B.4: EOS never proposed (not in the paper)
  confidence_eos_eot_inf: bool = False  # LLaDA Appendix B.4: see `generate` (not in the paper)

  def __post_init__(self):
    _check_common("DiffusionSettings", self.remasking, self.temperature, self.threshold)
    if None not in (self.steps, self.gen_length, self.block_length):
      _check_blocks("DiffusionSettings", self.steps, self.gen_length, self.block_length)
    _check_dual("DiffusionSettings", self.cache, self.dual_cache)


@dataclasses.dataclass(frozen=True)
class DeliberationSettings:
  """Second-pass correction of a first-pass hypothesis. Paper defaults: semi-AR, 128 steps,
  4 chunks, mask ratio 0.3, random masking (the ratio and masking apply to `diffusion` only)."""

  strategy: str = "semi_ar"
  masking: str = "random"
  mask_ratio: float = 0.3
  steps: int | None = 128  # None (a Transcriber's settings only): the checkpoint's response length
  num_chunks: int = 4
  remasking: str = "low_confidence"
  temperature: float = 0.0
  threshold: float | None = None
  cache: bool = False  # prompt + audio K/V cached, refreshed per sub-block (not in the paper)

  def __post_init__(self):
    _check_common("DeliberationSettings", self.remasking, self.temperature, self.threshold)
    if self.strategy not in STRATEGIES:
      raise ValueError(f"DeliberationSettings.strategy={self.strategy!r}: expected {STRATEGIES}")
    if self.masking not in MASKING:
      raise ValueError(f"DeliberationSettings.masking={self.masking!r}: expected {MASKING}")
    if not 0.0 <= self.mask_ratio <= 1.0:
      raise ValueError(f"DeliberationSettings.mask_ratio={self.mask_ratio}: expected in [0, 1]")
    if (self.steps is not None and self.steps < 1) or self.num_chunks < 1:
      raise ValueError(f"DeliberationSettings: steps {self.steps} and num_chunks "
                       f"{self.num_chunks} must be ≥ 1")
    if self.strategy == "semi_ar" and self.steps is not None and self.steps < self.num_chunks:
      # Diffusion-ASR would divide by steps // num_chunks = 0.
      raise ValueError(f"DeliberationSettings: semi_ar needs steps {self.steps} ≥ num_chunks "
                       f"{self.num_chunks}")


def _eos_eot_inf(eos_id: int, eot_id: int, temperature: float, logits_eos_inf: bool,
                 confidence_eos_eot_inf: bool) -> dict[str, tuple[int, ...]]:
  """`StepRules` fields for LLaDA's `logits_eos_inf` and `confidence_eos_eot_inf` (Appendix B.4)."""
  confidence: tuple[int, ...] = ()
  if confidence_eos_eot_inf:
    # LLaDA runs `logits_with_noise[:, :, EOS] = logits[:, :, EoT] = -inf` after x0 is chosen,
    # then takes the confidence from `softmax(logits)`. At temperature 0 `add_gumbel_noise`
    # returns the very `logits` tensor, so both writes land in it: EOS and EoT get probability 0
    # (and the rest is renormalised without them). At T > 0 `logits_with_noise` is a new float64
    # tensor that nothing reads again, so only EoT is removed from the confidence softmax.
    confidence = (eot_id,) if temperature > 0 else tuple(dict.fromkeys((eos_id, eot_id)))
  return dict(logits_inf=(eos_id,) if logits_eos_inf else (), confidence_inf=confidence)


def _resolved(settings, fields: tuple[str, ...]) -> None:
  unset = [f for f in fields if getattr(settings, f) is None]
  if unset:
    raise ValueError(f"{type(settings).__name__}: {', '.join(unset)} must be set to decode (None "
                     f"is for a Transcriber, which takes them from the checkpoint)")


def _check_dual(owner: str, cache: bool, dual_cache: bool) -> None:
  if dual_cache and not cache:
    raise ValueError(f"{owner}: dual_cache=True extends the prefix cache; set cache=True too")


def _check_blocks(owner: str, steps: int, gen_length: int, block_length: int) -> None:
  if min(steps, gen_length, block_length) < 1:
    raise ValueError(f"{owner}: steps {steps}, gen_length {gen_length} and block_length "
                     f"{block_length} must be ≥ 1")
  if gen_length % block_length:
    raise ValueError(f"{owner}: gen_length {gen_length} is not a multiple of block_length "
                     f"{block_length}")
  if steps % (gen_length // block_length):
    raise ValueError(f"{owner}: steps {steps} is not a multiple of the "
                     f"{gen_length // block_length} blocks")


def adaptive_gen_length(seconds, tokens_per_second: float = 5.0,
                        buckets: tp.Sequence[int] = (32, 64, 96, 128), multiple_of: int = 1) -> int:
  """Response length for a batch from its longest utterance: the smallest bucket that holds
  `seconds * tokens_per_second` tokens (the largest bucket if none does).

  Fewer masked positions mean shorter forwards and fewer steps. Read speech runs at roughly 2.5–3
  words (an estimated 3.5–4 tokens) per second; the 5/s default leaves headroom because a
  truncated response is all deletions.
  `multiple_of` keeps only buckets that a semi-AR block length divides.
  """
  fit = sorted(b for b in buckets if b % multiple_of == 0)
  if not fit:
    raise ValueError(f"adaptive_gen_length: no bucket of {tuple(buckets)} is a multiple of "
                     f"{multiple_of}")
  need = math.ceil(float(np.max(np.asarray(seconds))) * tokens_per_second)
  return next((b for b in fit if b >= need), fit[-1])


@flax.struct.dataclass
class _State:
  tokens: jax.Array  # [B, R] int32 response
  block: jax.Array  # [] int32 current block (lockstep over the batch)
  step: jax.Array  # [] int32 step within the block
  base: jax.Array  # [B] int32 tokens per step in this block …
  rem: jax.Array  # [B] int32 … plus one for the first `rem` steps …
  limit: jax.Array  # [B] int32 … for at most `limit` steps
  count: jax.Array  # [B] int32 forwards in which the row had masks to fill: indexes its noise
  done: jax.Array  # [B] bool: will not change again
  anchor: jax.Array  # [B, R] tokens when the current block was entered (`Schedule.leave`)
  keys: jax.Array  # [B] per-row PRNG keys
  cache: KVCache | None


# --- the engine -------------------------------------------------------------------------------
def _enter(sched: Schedule, tokens, block, length, valid):
  """Start `block`. Returns tokens and per-row (base, rem, limit): step i commits
  base + (i < rem) tokens (LLaDA `get_num_transfer_tokens`), for at most `limit` steps."""
  tokens, masked, limit = sched.enter(tokens, block, length, valid)
  rules = sched.rules
  if rules.threshold is not None:
    # Fast-dLLM loops until the block is filled; every step commits ≥ 1 token, so the response
    # length bounds it (and stops a model that keeps proposing the mask token itself).
    limit = jnp.full_like(masked, tokens.shape[1])
  if rules.eos_id is not None:  # Diffusion-ASR: after the block that committed an EOS, stop
    limit = jnp.where(jnp.any(valid & (tokens == rules.eos_id), axis=1), 0, limit)
  per = jnp.maximum(limit, 1)
  return tokens, masked // per, masked % per, limit


def _active(sched: Schedule, st, length, valid):
  """[B] rows that take this step: work left in their block and steps left in its schedule."""
  work = sched.work(st.tokens, st.block, st.step, length, valid)
  return jnp.any(work, axis=1) & (st.step < st.limit)


def _done(sched: Schedule, st, length, valid):
  """[B] rows that will not change again."""
  rules = sched.rules
  left = jnp.any(valid & (st.tokens == rules.mask_id), axis=1)
  done = (~left & sched.final(st.block)) | (st.block >= sched.num_blocks)
  if rules.eos_id is not None:
    stopped = jnp.any(valid & (st.tokens == rules.eos_id), axis=1)
    done |= stopped & ~_active(sched, st, length, valid)
  return done


def _settle(sched: Schedule, st, length, valid):
  """Move on while no row has work in the current block (rows advance in lockstep)."""

  def idle(s):
    return (s.block < sched.num_blocks) & ~jnp.any(_active(sched, s, length, valid))

  def next_block(s):
    tokens = sched.leave(s.tokens, s.anchor, s.block, length, valid)
    block = s.block + 1
    anchor = tokens
    tokens, base, rem, limit = _enter(sched, tokens, block, length, valid)
    return s.replace(block=block, step=jnp.int32(0), tokens=tokens, base=base, rem=rem,
                     limit=limit, anchor=anchor)

  st = jax.lax.while_loop(idle, next_block, st)
  return st.replace(done=_done(sched, st, length, valid))


def _fill_after_eos(tokens, eos_id):
  return jnp.where(jnp.cumsum(tokens == eos_id, axis=1) > 0, eos_id, tokens)


def _denoise(lm: Transformer, prefix: jax.Array, tokens: jax.Array, valid: jax.Array,
             length: jax.Array, keys: jax.Array, sched: Schedule,
             prefix_mask: jax.Array | None = None) -> jax.Array:
  """Fill the masks of `tokens` [B, R]. prefix [B or 2B (CFG), P, D]; valid [B, R] marks real
  response positions (others are key-masked and never change); length [B] = valid.sum(1);
  prefix_mask [B, P] bool (default all True): prefix positions that are keys (False: padding,
  key-masked in every forward and, through the cache's key mask, in every cached step)."""
  return _run(lm, prefix, tokens, valid, length, keys, sched, prefix_mask).tokens


def _run(lm: Transformer, prefix: jax.Array, tokens: jax.Array, valid: jax.Array,
         length: jax.Array, keys: jax.Array, sched: Schedule,
         prefix_mask: jax.Array | None = None, *, block: jax.Array | None = None,
         count: jax.Array | None = None, one_block: bool = False) -> _State:
  """`_denoise`'s engine → its final state. To resume a run (`slots`): `block` [] the block to
  enter (default 0), `count` [B] the forwards each row already took (its noise index goes on
  from there). `one_block`: stop once the batch has left the block it starts in, or is done."""
  b, r = tokens.shape
  p = prefix.shape[1]
  rules = sched.rules
  cfg = rules.cfg_scale > 0
  both = (lambda x: jnp.concatenate([x, x], 0)) if cfg else (lambda x: x)
  # LLaDA's CFG doubles the attention mask too: the unconditional half has the same padding.
  prefix_mask = jnp.ones((b, p), bool) if prefix_mask is None else both(prefix_mask)
  max_off = sched.max_offset
  # Cache slots past the response: an R-wide window starting at the last block needs them.
  cache_len = p + r + (0 if sched.window else max_off)

  def pick(logits, positions, st):
    """Logits [B(·2), T, V] at response `positions` [T] → proposals and confidences [B, T]."""
    if cfg:  # LLaDA: un + (cfg + 1) * (cond − un), the unconditional half has the prompt masked
      cond, un = jnp.split(logits, 2, axis=0)
      logits = un + (rules.cfg_scale + 1) * (cond - un)
    if rules.logits_inf:  # LLaDA `logits_eos_inf`: before the proposal, so in the confidence too
      logits = logits.at[..., jnp.asarray(rules.logits_inf)].set(-jnp.inf)
    u = None
    if rules.temperature > 0:
      u = batch_uniform(st.keys, st.count, GUMBEL, positions, (logits.shape[-1],))
    x0 = gumbel_argmax(logits, u, rules.temperature)
    if rules.remasking == "low_confidence":
      if rules.confidence_inf:  # LLaDA `confidence_eos_eot_inf`: after the proposal
        logits = logits.at[..., jnp.asarray(rules.confidence_inf)].set(-jnp.inf)
      conf = probability(logits, x0)
    else:
      conf = batch_uniform(st.keys, st.count, CONFIDENCE, positions)
    return x0, conf

  def full_forward(st, cache=None):
    return lm.forward(prefix, both(st.tokens), prefix_mask=prefix_mask, response_mask=both(valid),
                      cache=cache)

  def propose(st):
    if not rules.cache:
      logits, _ = full_forward(st)
      return *pick(logits, jnp.arange(r), st), None

    def refresh(st):  # Fast-dLLM: a block's first step is a full forward that (re)writes the cache
      fresh = init_cache(lm.config, prefix.shape[0], cache_len)
      logits, cache = full_forward(st, fresh)
      return *pick(logits, jnp.arange(r), st), cache

    def block_only(st):
      # Dual cache: the block alone runs; prefix, earlier blocks and the still-masked suffix are
      # read from the K/V written by the block's first step (the suffix's are stale, as Fast-dLLM).
      w = sched.window
      off = sched.window_start(st.block)
      window = jax.lax.dynamic_slice_in_dim(st.tokens, off, w, axis=1)
      window_valid = jax.lax.dynamic_slice_in_dim(valid, off, w, axis=1)
      logits, _ = lm.forward(None, both(window), response_mask=both(window_valid), cache=st.cache,
                             cache_index=p + off, update_cache=False)
      x0, conf = pick(logits, off + jnp.arange(w), st)
      # back to response coordinates; positions outside the block are not candidates
      back = lambda x: jax.lax.dynamic_update_slice_in_dim(jnp.zeros((b, r), x.dtype), x, off, 1)
      return back(x0), back(conf), st.cache

    def suffix(st):
      # Only [block start, end) runs, over the cached prefix. The window is R wide for every block
      # (static shapes): past the response it holds key-masked filler whose outputs are dropped.
      off = sched.window_start(st.block) if max_off else 0
      pad = lambda x, v: jnp.concatenate([x, jnp.full((x.shape[0], max_off), v, x.dtype)], 1)
      window = jax.lax.dynamic_slice_in_dim(pad(st.tokens, rules.mask_id), off, r, axis=1)
      window_valid = jax.lax.dynamic_slice_in_dim(pad(valid, False), off, r, axis=1)
      logits, _ = lm.forward(None, both(window), response_mask=both(window_valid), cache=st.cache,
                             cache_index=p + off, update_cache=False)
      x0, conf = pick(logits, off + jnp.arange(r), st)
      # back to response coordinates; positions before the block are committed and ignored
      back = lambda x: jax.lax.dynamic_slice_in_dim(
          jnp.concatenate([jnp.zeros((b, max_off), x.dtype), x], 1), max_off - off, r, axis=1)
      return back(x0), back(conf), st.cache

    return jax.lax.cond(st.step == 0, refresh, block_only if sched.window else suffix, st)

  def body(st: _State) -> _State:
    x0, conf, cache = propose(st)
    active = _active(sched, st, length, valid)
    candidates = sched.candidates(st.tokens, st.block, st.step, length, valid) & active[:, None]
    conf = jnp.where(candidates, conf, -jnp.inf)
    order = rank(conf, descending=True)
    if rules.threshold is None:
      k = st.base + (st.step < st.rem)
      commit = candidates & (order < k[:, None])
    else:  # Fast-dLLM: the most confident token, plus every one at or above the threshold
      commit = candidates & ((order == 0) | (conf >= rules.threshold))
    tokens = jnp.where(commit, x0, st.tokens)
    if rules.eos_id is not None:
      tokens = _fill_after_eos(tokens, rules.eos_id)
    st = st.replace(tokens=tokens, step=st.step + 1, cache=cache,
                    count=st.count + active)
    return _settle(sched, st, length, valid)

  anchor = tokens
  block = jnp.int32(0) if block is None else block
  tokens, base, rem, limit = _enter(sched, tokens, block, length, valid)
  cache = None
  if rules.cache:
    cache = init_cache(lm.config, prefix.shape[0], cache_len)
  count = jnp.zeros((b,), jnp.int32) if count is None else count
  st = _State(tokens=tokens, block=block, step=jnp.int32(0), base=base, rem=rem,
              limit=limit, count=count, done=jnp.zeros((b,), bool), anchor=anchor, keys=keys,
              cache=cache)
  st = _settle(sched, st, length, valid)
  if one_block:
    start = st.block
    return jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.block == start), body, st)
  return jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, st)


# --- entry points -----------------------------------------------------------------------------
def _needs_key(rules: StepRules, key, what: str):
  if key is None and (rules.temperature > 0 or rules.remasking == "random"):
    raise ValueError(f"{what}: temperature > 0 or random remasking needs a PRNG `key`")


@functools.partial(jax.jit, static_argnames=("graphdef", "sched", "gen_length"))
def _generate(graphdef, state, prompt_ids, prompt_mask, keys, sched: Schedule, gen_length: int):
  lm = nnx.merge(graphdef, state)
  b, p = prompt_ids.shape
  log.info("compiling LLaDA generate: batch %d, prompt %d, gen_length %d, %s", b, p, gen_length,
           sched)
  rules = sched.rules
  prefix = lm.embed(prompt_ids)
  if rules.cfg_scale > 0:
    # LLaDA: `un_x[prompt_index] = mask_id`, prompt_index = x != mask_id: pads included.
    prefix = jnp.concatenate([prefix, lm.embed(jnp.full_like(prompt_ids, rules.mask_id))], 0)
  tokens = jnp.full((b, gen_length), rules.mask_id, jnp.int32)
  valid = jnp.ones((b, gen_length), bool)
  # Positions stay 0 .. P + gen_length − 1 over the padded sequence (the Transformer's default),
  # padding or not. LLaDA's model (OLMo-derived `modeling_llada.py`) takes no position ids: its
  # RoPE rotates q and k by their index in the sequence, and `attention_mask` only becomes an
  # additive key bias; transformers' LLaMA forward too defaults to arange positions (only HF's
  # own `generate` derives them from the mask, and LLaDA's generate calls the model directly).
  # A left-padded row's tokens thus sit `pads` positions later than alone. RoPE scores depend
  # only on position differences, so in exact arithmetic the row equals its unpadded self; in
  # float the shifted rotations round differently, so tokens agree unless a near-tie flips.
  out = _denoise(lm, prefix, tokens, valid, jnp.full((b,), gen_length, jnp.int32), keys, sched,
                 prefix_mask=prompt_mask)
  return jnp.concatenate([prompt_ids, out], axis=1)


def generate(model: Transformer, prompt_ids: jax.Array, attention_mask: jax.Array | None = None,
             *, steps: int = 128, gen_length: int = 128, block_length: int = 128,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             mask_id: int = 126336, logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, key=None, threshold: float | None = None,
             cache: bool = False, dual_cache: bool = False) -> jax.Array:
  """LLaDA's reference `generate`, batched: prompt_ids [B, P] → int32 [B, P + gen_length].

  `attention_mask` [B, P] (0/1 or bool, as a tokenizer's): prompts left-padded to P, as LLaDA's
  `main()` does; padded positions are key-masked in every forward (CFG's unconditional half and
  the KV caches included), the response is always attended. None: every position is real.
  `logits_eos_inf`: the EOS logit (`model.config.eos_id`) is −∞ before tokens are proposed.
  `confidence_eos_eot_inf`: after the proposal, the low-confidence softmax is taken without EoT
  (`eot_id`), and without EOS too at temperature 0, as LLaDA's code does (see `_eos_eot_inf`).
  `key`: one PRNG key or [B] row keys (needed for temperature > 0 or random remasking).
  `threshold` / `cache` / `dual_cache`: Fast-dLLM options, off by default.
  """
  check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
  _check_common("generate", remasking, temperature, threshold)
  _check_blocks("generate", steps, gen_length, block_length)
  _check_dual("generate", cache, dual_cache)
  lm_cfg = model.config
  rules = StepRules(remasking=remasking, temperature=float(temperature), threshold=threshold,
                    cache=cache, mask_id=mask_id, cfg_scale=float(cfg_scale),
                    **_eos_eot_inf(lm_cfg.eos_id, lm_cfg.eot_id, temperature, logits_eos_inf,
                                   confidence_eos_eot_inf))
  sched = Blocks.from_lengths(rules, gen_length=gen_length, block_length=block_length,
                              steps=steps, dual_cache=dual_cache)
  _needs_key(rules, key, "generate")
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  if attention_mask is None:
    prompt_mask = jnp.ones(prompt_ids.shape, bool)  # the same forwards as no mask at all
  else:
    check_array("attention_mask", attention_mask, ndim=2, dtypes=("integer", "bool"))
    if tuple(attention_mask.shape) != prompt_ids.shape:
      raise ValueError(f"attention_mask: expected shape {prompt_ids.shape} (prompt_ids), got "
                       f"{tuple(attention_mask.shape)}")
    prompt_mask = jnp.asarray(attention_mask) != 0
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompt_ids, prompt_mask, row_keys(key, prompt_ids.shape[0]),
                   sched=sched, gen_length=gen_length)


@functools.partial(jax.jit, static_argnames=("graphdef", "sched", "gen_length"))
def _decode(graphdef, state, mel, prompt_ids, keys, sched: Schedule, gen_length: int):
  model = nnx.merge(graphdef, state)
  prefix = model.prefix_embeds(prompt_ids, mel)  # once: prompt + audio never change
  b, p, _ = prefix.shape
  log.info("compiling Whisper-LLaDA decode: batch %d, prefix %d, gen_length %d, %s", b, p,
           gen_length, sched)
  tokens = jnp.full((b, gen_length), sched.rules.mask_id, jnp.int32)
  valid = jnp.ones((b, gen_length), bool)
  return _denoise(model.lm, prefix, tokens, valid, jnp.full((b,), gen_length, jnp.int32), keys,
                  sched)


def decode(model, mel: jax.Array, prompt_ids: jax.Array, *,
           settings: DiffusionSettings = DiffusionSettings(), key=None) -> jax.Array:
  """Standalone Whisper-LLaDA transcription → response tokens int32 [B, gen_length].

  The sequence is [prompt, audio, gen_length masks]; with `eos_rule` a row is EOS from its first
  committed EOS on.
  """
  check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
  check_array("mel", mel, ndim=3)
  s, lm_cfg = settings, model.config.lm
  _resolved(s, ("gen_length", "steps", "block_length"))
  rules = StepRules(remasking=s.remasking, temperature=float(s.temperature),
                    threshold=s.threshold, cache=s.cache, mask_id=lm_cfg.mask_id,
                    eos_id=lm_cfg.eos_id if s.eos_rule else None,
                    **_eos_eot_inf(lm_cfg.eos_id, lm_cfg.eot_id, s.temperature, s.logits_eos_inf,
                                   s.confidence_eos_eot_inf))
  sched = Blocks.from_lengths(rules, gen_length=s.gen_length, block_length=s.block_length,
                              steps=s.steps, dual_cache=s.dual_cache)
  _needs_key(rules, key, "decode")
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  graphdef, state = nnx.split(model)
  return _decode(graphdef, state, jnp.asarray(mel), prompt_ids,
                 row_keys(key, prompt_ids.shape[0]), sched=sched, gen_length=s.gen_length)


@functools.partial(jax.jit, static_argnames=("graphdef", "sched"))
def _deliberate(graphdef, state, mel, prompt_ids, hyp_ids, hyp_len, keys, sched: Schedule):
  model = nnx.merge(graphdef, state)
  lm = model.lm
  prefix = model.prefix_embeds(prompt_ids, mel)
  b, p, _ = prefix.shape
  r = hyp_ids.shape[1]
  log.info("compiling Whisper-LLaDA deliberation: batch %d, prefix %d, hypothesis bucket %d, %s",
           b, p, r, sched)
  # Padding past a row's hypothesis is key-masked: batch 1 in the paper has no padding at all.
  valid = jnp.arange(r) < hyp_len[:, None]
  tokens = sched.start(lm, prefix, hyp_ids, valid, hyp_len, keys)
  return _denoise(lm, prefix, tokens, valid, hyp_len, keys, sched)


def deliberate(model, mel: jax.Array | None, prompt_ids: jax.Array, hyp_ids: jax.Array,
               hyp_len: jax.Array, *, settings: DeliberationSettings = DeliberationSettings(),
               key=None) -> jax.Array:
  """Correct first-pass hypotheses (Diffusion-ASR `transcribe_correction`) → int32 [B, R].

  hyp_ids [B, R] right-padded to a bucket R, hyp_len [B] real lengths; positions ≥ hyp_len are
  key-masked and returned unchanged. `mel=None`: text-only deliberation (no audio embeddings).

  - diffusion (`schedules.MaskedSubset`): k = int(L · mask_ratio) tokens masked (random, or the
    k least probable under one forward with the response filled with pad tokens), then
    `min(steps, k)` denoising steps.
  - semi_ar (`schedules.SubBlocks`): as Diffusion-ASR's code, each of `num_chunks` sub-blocks
    (size L // num_chunks, the last takes the remainder) is fully masked in turn, left to right,
    with the corrected earlier sub-blocks and the original later ones visible, and denoised for
    `steps // num_chunks` steps; `mask_ratio` and `masking` are not used (as in their code).
  """
  check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
  check_array("hyp_ids", hyp_ids, ndim=2, dtypes=("integer",))
  if mel is not None:
    check_array("mel", mel, ndim=3)
  b, r = hyp_ids.shape
  hyp_len = jnp.asarray(hyp_len, jnp.int32)
  if hyp_len.shape != (b,):
    raise ValueError(f"hyp_len: expected shape ({b},), got {hyp_len.shape}")
  if not isinstance(hyp_len, jax.core.Tracer):
    lens = np.asarray(hyp_len)
    if b and (lens.min() < 0 or lens.max() > r):
      raise ValueError(f"hyp_len {lens.tolist()}: expected 0 ≤ length ≤ bucket {r}")
  s, lm_cfg = settings, model.config.lm
  _resolved(s, ("steps",))
  rules = StepRules(remasking=s.remasking, temperature=float(s.temperature),
                    threshold=s.threshold, cache=s.cache, mask_id=lm_cfg.mask_id)
  sched: Schedule
  if s.strategy == "semi_ar":
    sched = SubBlocks(rules=rules, num_chunks=s.num_chunks, steps=s.steps // s.num_chunks)
  else:
    sched = MaskedSubset(rules=rules, steps=s.steps, masking=s.masking, mask_ratio=s.mask_ratio)
    if key is None and s.masking == "random":
      raise ValueError("deliberate: random masking needs a PRNG `key`")
  _needs_key(rules, key, "deliberate")
  graphdef, state = nnx.split(model)
  return _deliberate(graphdef, state, None if mel is None else jnp.asarray(mel),
                     jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(hyp_ids, jnp.int32), hyp_len,
                     row_keys(key, b), sched=sched)
