"""Iteration-level scheduling of semi-autoregressive decoding: rows that join at block boundaries.

`decode` runs a batch until its slowest row is done: a row whose block committed an EOS (the
Diffusion-ASR rule) sits idle, committing nothing, while the others fill their later blocks. Here
each of the batch's `rows` slots moves through its own blocks: `SlotDecoder.step` runs one block
for every busy slot (one jitted call, rows at different blocks) and retires the rows that are
done; `admit` hands free slots to waiting utterances, whose prompt + audio embeddings it computes
(compiled for 1, 2, 4 … rows, so a few newcomers do not pay for a whole batch's encoder pass).

A row's tokens equal `decode`'s for the same utterance: the same steps, with its noise indexed by
its own count of forwards (`diffusion._run`), so neither its neighbours nor when it joined matter
(tests/test_slots.py). Each row is its own program under `jax.vmap`, so a prefix cache's
`lax.cond` (refresh or reuse) becomes a select that runs both branches: the Fast-dLLM cache modes
would lose their saving here, and are refused. benchmarks/bench_block_scheduling.py measures
whether this beats whole-batch scheduling on mixed audio lengths.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.decoding.diffusion import DiffusionSettings, StepRules, _eos_eot_inf, _run
from llada_jax.decoding.schedules import Blocks
from llada_jax.decoding.scores import utterance_keys
from llada_jax.models import features


def schedule(settings: DiffusionSettings, lm_config) -> Blocks:
  """`decode`'s block schedule for `settings`; ValueError for what slots cannot run."""
  s = settings
  if s.cache or s.dual_cache:
    raise ValueError("slots: DiffusionSettings.cache / dual_cache: a cached block step is a "
                     "`lax.cond` that per-row programs turn into both branches; use `decode`")
  if s.threshold is not None:
    raise ValueError("slots: DiffusionSettings.threshold is not supported; use `decode`")
  if None in (s.gen_length, s.steps, s.block_length):
    raise ValueError("slots: DiffusionSettings.gen_length, steps and block_length must be set")
  rules = StepRules(remasking=s.remasking, temperature=float(s.temperature), threshold=None,
                    cache=False, mask_id=lm_config.mask_id,
                    eos_id=lm_config.eos_id if s.eos_rule else None,
                    **_eos_eot_inf(lm_config.eos_id, lm_config.eot_id, s.temperature,
                                   s.logits_eos_inf, s.confidence_eos_eot_inf))
  return Blocks.from_lengths(rules, gen_length=s.gen_length, block_length=s.block_length,
                             steps=s.steps)


@functools.partial(jax.jit, static_argnames=("graphdef", "sched"))
def _advance(graphdef, state, prefix, tokens, block, count, keys, sched: Blocks):
  """One block for every row: prefix [B, P, D], tokens [B, R], each row's block and count [B]
  → tokens, block, count, done."""
  lm = nnx.merge(graphdef, state).lm
  r = tokens.shape[1]
  valid, length = jnp.ones((1, r), bool), jnp.full((1,), r, jnp.int32)

  def row(prefix, tokens, block, count, key):
    # A row resumes at its own block, not at its first block with masks: a mask the model
    # proposed itself in an earlier block stays a candidate later (`Blocks`), as in `decode`.
    st = _run(lm, prefix[None], tokens[None], valid, length, key[None], sched, block=block,
              count=count[None], one_block=True)
    return st.tokens[0], st.block, st.count[0], st.done[0]

  return jax.vmap(row)(prefix, tokens, block, count, keys)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_mels", "frames"))
def _prefix(graphdef, state, audio, prompt, n_mels: int, frames: int):
  model = nnx.merge(graphdef, state)
  return model.prefix_embeds(prompt, features.log_mel(audio, n_mels=n_mels, frames=frames))


@jax.jit
def _place(prefix, tokens, block, count, keys, slots, new_prefix, new_keys, mask_id):
  """Newcomers into `slots` [N] (−1: padding rows, dropped): fresh masks, block and count 0."""
  n = slots.shape[0]
  at = jnp.where(slots >= 0, slots, prefix.shape[0])  # out of range: `drop`
  prefix = prefix.at[at].set(new_prefix[:n], mode="drop")
  tokens = tokens.at[at].set(jnp.full((n, tokens.shape[1]), mask_id, tokens.dtype), mode="drop")
  block = block.at[at].set(0, mode="drop")
  count = count.at[at].set(0, mode="drop")
  keys = keys.at[at].set(new_keys[:n], mode="drop")
  return prefix, tokens, block, count, keys


@dataclasses.dataclass
class Finished:
  id: tp.Any  # what `admit` was given for the row (an utterance id, a server's window)
  tokens: np.ndarray  # [R] int32
  blocks: int  # blocks this row took
  finished_s: float  # seconds from the decoder's creation (or `run`'s start)


class SlotDecoder:
  """`rows` slots over a Whisper-LLaDA (`graphdef`, `state` from `nnx.split`), fed one block at a
  time: `admit` newcomers into free slots, `step` one block, which returns the rows it finished.
  `run(requests)` drives both over an iterable of (id, audio [S] float32, seed) in order."""

  def __init__(self, graphdef, state, config, prompt: np.ndarray, settings: DiffusionSettings,
               *, rows: int, mel_frames: int, seed: int = 0):
    self.graphdef, self.state, self.config = graphdef, state, config
    self.sched = schedule(settings, config.lm)
    self.prompt = np.asarray(prompt, np.int32).reshape(1, -1)
    self.rows, self.frames, self.seed = rows, mel_frames, seed
    self.samples = mel_frames * features.HOP
    self.gen_length = int(settings.gen_length)
    self.sizes = [1 << i for i in range(rows.bit_length()) if 1 << i < rows] + [rows]
    self.reset()

  def reset(self) -> None:
    """Empty every slot (after a failed step: its rows are lost, the decoder goes on)."""
    b = self.rows
    self._prefix = None  # [B, P, D], shaped by the first newcomers' embeddings
    # A free slot holds a response with nothing left to fill (EOS rows at first, then the last
    # finished row's): `_run` leaves it done, committing nothing.
    self._tokens = jnp.full((b, self.gen_length), self.config.lm.eos_id, jnp.int32)
    self._block = self._count = jnp.zeros((b,), jnp.int32)
    self._keys = utterance_keys(self.seed, jnp.zeros((b,), jnp.int32))
    self._owner: list[tp.Any] = [None] * b  # each slot's row id; None: free
    self._blocks = [0] * b
    self._start = time.perf_counter()
    self.advances = 0  # `step` calls since

  def committed(self) -> list[tuple[tp.Any, np.ndarray]]:
    """(id, the committed start of its response) for every busy row: its tokens up to the first
    position still masked. Committed tokens never change (no remasking), so this only grows."""
    tokens, mask = np.asarray(self._tokens), self.config.lm.mask_id
    out = []
    for i, owner in enumerate(self._owner):
      if owner is not None:
        masked = np.flatnonzero(tokens[i] == mask)
        out.append((owner, tokens[i, : masked[0] if masked.size else tokens.shape[1]]))
    return out

  def owners(self) -> list[tp.Any]:
    """The ids of the rows in the slots now."""
    return [o for o in self._owner if o is not None]

  @property
  def free(self) -> int:
    return sum(o is None for o in self._owner)

  @property
  def busy(self) -> int:
    return self.rows - self.free

  def _encode(self, audio: list[np.ndarray]):
    """Prompt + audio embeddings of the newcomers, in the smallest compiled size that holds
    them (padding rows of silence)."""
    n = next(s for s in self.sizes if s >= len(audio))
    batch, _ = features.pad_or_trim([*audio, *[np.zeros(0, np.float32)] * (n - len(audio))],
                                    self.samples)
    return _prefix(self.graphdef, self.state, jnp.asarray(batch),
                   jnp.asarray(np.repeat(self.prompt, n, 0)), n_mels=self.config.whisper.n_mels,
                   frames=self.frames)

  def admit(self, items: tp.Sequence[tuple[tp.Any, np.ndarray, int]]) -> None:
    """(id, audio [S] float32 16 kHz, seed) per newcomer (any id but None), at most `free` of
    them: each takes a free slot and starts at its first block with the next `step`. Audio past
    the decoder's window is cut (a server cuts long files into windows first)."""
    if len(items) > self.free:
      raise ValueError(f"SlotDecoder.admit: {len(items)} rows for {self.free} free slots")
    if not items:
      return
    enc = self._encode([a for _, a, _ in items])
    if self._prefix is None:
      self._prefix = jnp.zeros((self.rows, *enc.shape[1:]), enc.dtype)
    free = [i for i, o in enumerate(self._owner) if o is None]
    slots = np.full(enc.shape[0], -1, np.int32)
    slots[: len(items)] = free[: len(items)]
    seeds = [int(s) for _, _, s in items] + [0] * (enc.shape[0] - len(items))
    self._prefix, self._tokens, self._block, self._count, self._keys = _place(
        self._prefix, self._tokens, self._block, self._count, self._keys, jnp.asarray(slots), enc,
        utterance_keys(self.seed, jnp.asarray(seeds, jnp.int32)), self.config.lm.mask_id)
    for slot, (ident, _, _) in zip(free, items):
      self._owner[slot], self._blocks[slot] = ident, 0

  def step(self) -> list[Finished]:
    """One block for every busy slot; the rows that are done leave (their slots are free)."""
    if not self.busy:
      return []
    self.advances += 1
    self._tokens, self._block, self._count, done = _advance(
        self.graphdef, self.state, self._prefix, self._tokens, self._block, self._count,
        self._keys, sched=self.sched)
    done = np.asarray(done)
    now = time.perf_counter() - self._start
    out, tokens = [], None
    for i, owner in enumerate(self._owner):
      if owner is None:
        continue
      self._blocks[i] += 1
      if done[i]:
        tokens = np.asarray(self._tokens) if tokens is None else tokens
        out.append(Finished(owner, tokens[i].copy(), self._blocks[i], now))
        self._owner[i] = None
    return out

  def run(self, requests: tp.Iterable[tuple[tp.Any, np.ndarray, int]]) -> tp.Iterator[Finished]:
    """Yield each utterance as it finishes. Waiting utterances take free slots at every block
    boundary, in order."""
    pending, exhausted = iter(requests), False
    self.reset()
    while True:
      new = []
      while len(new) < self.free and not exhausted:
        item = next(pending, None)
        if item is None:
          exhausted = True
        else:
          new.append(item)
      self.admit(new)
      if not self.busy:
        return
      yield from self.step()

  def warm_up(self) -> None:
    """Compile every program `run` / `step` may call (each encoder size, the block step)."""
    for n in self.sizes:
      for _ in self.run([(i, np.zeros(self.samples // 2, np.float32), 0) for i in range(n)]):
        pass
    self.reset()

