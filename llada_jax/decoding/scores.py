"""Per-position scores of masked-diffusion decoding: counter-based noise, token probabilities,
ranks, and the hypothesis positions that deliberation masks.

Noise is a pure function of (row key, row's forward count, stream, response position), so a row
gets the same noise alone or in any batch, and a plain reference loop can ask for the same arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GUMBEL, CONFIDENCE, MASKING_SCORES = 0, 1, 2  # noise streams


def row_uniform(key: jax.Array, count, stream: int, positions: jax.Array,
                tail: tuple[int, ...] = ()) -> jax.Array:
  """Uniform [0, 1) float32 noise [len(positions), *tail] for one row."""
  k = jax.random.fold_in(jax.random.fold_in(key, count), stream)
  return jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(k, p), tail))(positions)


def batch_uniform(keys, counts, stream, positions, tail=()):
  """`row_uniform` for every row: keys [B], counts [B] → [B, len(positions), *tail]."""
  one = lambda key, count: row_uniform(key, count, stream, positions, tail)
  return jax.vmap(one)(keys, counts)


def utterance_keys(seed: int, seeds: jax.Array) -> jax.Array:
  """[B] row keys from one run seed and each utterance's own seed (a transcriber's, from its
  id): the same row gets the same key in any batch or slot."""
  return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(seeds)


def row_keys(key: jax.Array | None, batch: int) -> jax.Array:
  """One key per row: `key` may be a single key (split per row) or already [B] keys."""
  if key is None:
    key = jax.random.key(0)
  key = jnp.asarray(key)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.shape == ():
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise ValueError(f"key: expected a single key or {batch} row keys, got shape {key.shape}")
  return key


def gumbel_argmax(logits: jax.Array, u: jax.Array, temperature: float) -> jax.Array:
  """LLaDA's Gumbel-max, `argmax(exp(l) / (-log u) ** T)`, taken in log space.

  LLaDA computes it in float64 (low-precision Gumbel-max hurts masked diffusion, arXiv 2409.02908).
  JAX has no float64 without the global `jax_enable_x64` switch, so we use the monotone equivalent
  `argmax(l - T * log(-log u))`: it never overflows (exp(l) does above l ≈ 709) and picks the same
  token as the float64 formula up to float32 rounding of the scores.
  """
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  return jnp.argmax(logits - temperature * jnp.log(-jnp.log(u)), -1).astype(jnp.int32)


def probability(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """softmax(logits)[ids] without materialising the [B, T, V] probabilities."""
  picked = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
  return jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))


def rank(scores: jax.Array, descending: bool) -> jax.Array:
  """Rank of each entry along the last axis; ties rank the lower index first (torch.topk's usual
  and lax.top_k's documented order)."""
  order = jnp.argsort(-scores if descending else scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def mask_hypothesis(scores: jax.Array, hyp_len: jax.Array, counts: jax.Array) -> jax.Array:
  """[B, R] bool: each row's `counts` lowest-scoring positions among its first `hyp_len`.

  Diffusion-ASR: topk(largest=False) of the confidences, or randperm(L)[:k], which is the k lowest
  of L uniform scores.
  """
  valid = jnp.arange(scores.shape[1]) < hyp_len[:, None]
  order = rank(jnp.where(valid, scores, jnp.inf), descending=False)
  return valid & (order < counts[:, None])
