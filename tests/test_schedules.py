"""The denoising schedules as values: jit static arguments compared by value, and the block
bounds each one reads from its reference (the decoding itself is checked in test_decoding.py)."""

import jax.numpy as jnp
import numpy as np

from llada_jax.decoding.schedules import Blocks, MaskedSubset, StepRules, SubBlocks

RULES = StepRules(remasking="low_confidence", temperature=0.0, threshold=None, cache=False,
                  mask_id=127)


def test_schedules_are_hashable_values():
  makers = (lambda: Blocks.from_lengths(RULES, gen_length=32, block_length=8, steps=16),
            lambda: SubBlocks(rules=RULES, num_chunks=4, steps=2),
            lambda: MaskedSubset(rules=RULES, steps=16, masking="random", mask_ratio=0.3))
  for make in makers:
    a, b = make(), make()
    assert a is not b and a == b and hash(a) == hash(b)
  assert len({make() for make in makers}) == 3
  blocks = makers[0]()
  assert (blocks.num_blocks, blocks.steps, blocks.max_offset, blocks.window) == (4, 4, 24, None)


def _covered(sched, block, length, r):
  """[B, R] positions of `block`, read through `leave` (it keeps the block, reverts the rest)."""
  valid = jnp.arange(r) < length[:, None]
  ones = jnp.ones((len(length), r), jnp.int32)
  return np.asarray(sched.leave(ones, 0 * ones, jnp.int32(block), length, valid)).astype(bool)


def test_sub_blocks_split_each_row_and_the_last_takes_the_remainder():
  """Diffusion-ASR: chunk_size = L // num_chunks; the last chunk ends at L."""
  sched = SubBlocks(rules=RULES, num_chunks=4, steps=2)
  length = jnp.array([13, 3, 0], jnp.int32)
  spans = [_covered(sched, block, length, 16) for block in range(4)]
  rows = [[s[row].nonzero()[0].tolist() for s in spans] for row in range(3)]
  assert rows[0] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
  assert rows[1] == [[], [], [], [0, 1, 2]]
  assert rows[2] == [[], [], [], []]
  assert bool(sched.final(jnp.int32(3))) and not bool(sched.final(jnp.int32(2)))
