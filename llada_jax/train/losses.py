"""Training objectives over the response tokens: masked diffusion (LLaDA) and next-token (LLaMA).

Every loss returns `(total, count)`: the loss is `total / count`. Keeping the two apart lets
gradient accumulation and data parallelism sum micro-batches first and divide once, so a step over 4
micro-batches is exactly the step over their concatenation.

Prompt and audio are never targets: the losses only ever see response positions.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import optax


class Noise(tp.NamedTuple):
  """A forward-process sample for a batch of responses."""

  tokens: jax.Array  # [B, R] int32: the response with masked positions replaced by mask_id
  masked: jax.Array  # [B, R] bool
  p_mask: jax.Array  # [B] float32: the masking probability each row was drawn with


def sample_noise(key: jax.Array, response: jax.Array, mask_id: int, *, weighting: str = "paper",
                 eps: float = 1e-3) -> Noise:
  """Per row t ~ U(0, 1); every response token (EOS padding included) masked with probability
  t (`paper`, as Diffusion-ASR) or (1 - eps) t + eps (`llada`, LLaDA's SFT, which keeps p > 0)."""
  key_t, key_m = jax.random.split(key)
  b, r = response.shape
  t = jax.random.uniform(key_t, (b,), jnp.float32)
  p_mask = t if weighting == "paper" else (1.0 - eps) * t + eps
  masked = jax.random.uniform(key_m, (b, r), jnp.float32) < p_mask[:, None]
  return Noise(jnp.where(masked, mask_id, response).astype(response.dtype), masked, p_mask)


def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per position in float32: logits [..., V], targets [...] int."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def diffusion_loss(logits: jax.Array, response: jax.Array, noise: Noise, valid: jax.Array, *,
                   weighting: str = "paper") -> tuple[jax.Array, jax.Array]:
  """logits [B, R, V] at the response positions of the noised sequence; response [B, R] the clean
  targets; valid [B] False for padding rows of a short last batch.

  paper: Σ CE over masked tokens / number of masked tokens (no 1/t weight).
  llada: Σ_rows (Σ_masked CE / p_mask) / R, over the number of rows; R counts every response
         position (LLaDA's answer length includes the EOS padding it trains).
  """
  ce = token_ce(logits, response)
  on = noise.masked & valid[:, None]
  if weighting == "paper":
    return jnp.sum(jnp.where(on, ce, 0.0)), jnp.sum(on).astype(jnp.float32)
  if weighting != "llada":
    raise ValueError(f"weighting={weighting!r}: expected 'paper' or 'llada'")
  per_row = jnp.sum(jnp.where(on, ce, 0.0), axis=1) / noise.p_mask / response.shape[1]
  return jnp.sum(jnp.where(valid, per_row, 0.0)), jnp.sum(valid).astype(jnp.float32)


def ar_loss(logits: jax.Array, response: jax.Array, response_len: jax.Array, valid: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Next-token CE on the response. logits [B, R, V] where row i predicts response[:, i] (i.e. taken
  one position earlier: the first response token is predicted from the last audio position).
  response_len [B] counts real tokens incl. the first EOS; later EOS padding is not a target."""
  ce = token_ce(logits, response)
  on = (jnp.arange(response.shape[1])[None, :] < response_len[:, None]) & valid[:, None]
  return jnp.sum(jnp.where(on, ce, 0.0)), jnp.sum(on).astype(jnp.float32)


def mean(total: jax.Array, count: jax.Array) -> jax.Array:
  """total / count, 0 for a batch with nothing to predict (e.g. every row drew t ≈ 0)."""
  return total / jnp.maximum(count, 1.0)
