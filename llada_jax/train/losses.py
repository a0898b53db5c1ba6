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
  # [B, R] float32: each masked token's share of the `paper` loss (see `diffusion_loss`)
  weight: jax.Array


def sample_noise(key: jax.Array, response: jax.Array, mask_id: int, *, weighting: str = "paper",
                 eps: float = 1e-3, targets: jax.Array | None = None,
                 valid: jax.Array | None = None, pad_group: int | None = None) -> Noise:
  """Per row t ~ U(0, 1); every target token (EOS padding included) masked with probability
  t (`paper`, as Diffusion-ASR) or (1 - eps) t + eps (`llada`, LLaDA's SFT, which keeps p > 0).

  targets [B, R] bool: the positions that may be masked (default: all). valid [B]: padding rows of
  a short batch are never targets. pad_group: the `paper` loss is the mean over groups of that
  many consecutive rows of each group's mean over its masked tokens (Diffusion-ASR's per-GPU loss,
  averaged by DDP); None: one mean over the batch's masked tokens. The weights are fixed here, on
  the whole batch, so gradient accumulation over any micro-batches gives the same loss.
  """
  key_t, key_m = jax.random.split(key)
  b, r = response.shape
  t = jax.random.uniform(key_t, (b,), jnp.float32)
  p_mask = t if weighting == "paper" else (1.0 - eps) * t + eps
  masked = jax.random.uniform(key_m, (b, r), jnp.float32) < p_mask[:, None]
  if targets is not None:
    masked &= targets
  if valid is not None:
    masked &= valid[:, None]
  weight = masked.astype(jnp.float32)
  if pad_group is not None:
    if b % pad_group:
      raise ValueError(f"sample_noise: a batch of {b} rows is not whole groups of data.pad_group="
                       f"{pad_group} rows (each group's loss is one mean over its masked tokens)")
    per_group = jnp.sum(weight.reshape(b // pad_group, pad_group * r), axis=1)
    share = 1.0 / jnp.maximum(per_group, 1.0)  # a group with no mask adds nothing
    weight = weight * jnp.repeat(share, pad_group)[:, None]
  return Noise(jnp.where(masked, mask_id, response).astype(response.dtype), masked, p_mask, weight)


def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per position in float32: logits [..., V], targets [...] int."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def diffusion_loss(logits: jax.Array, response: jax.Array, noise: Noise, valid: jax.Array, *,
                   weighting: str = "paper", targets: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """logits [B, R, V] at the response positions of the noised sequence; response [B, R] the clean
  targets; valid [B] False for padding rows of a short last batch.

  paper: Σ weight · CE over masked tokens / Σ weight: with unit weights, Σ CE over masked tokens /
         their number (Diffusion-ASR, no 1/t weight); with `sample_noise`'s group weights, the mean
         over groups of each group's mean.
  llada: Σ_rows (Σ_masked CE / p_mask) / answer length, over the number of rows; the answer length
         counts every target position (LLaDA's includes the EOS padding it trains).
  """
  ce = token_ce(logits, response)
  on = noise.masked & valid[:, None]
  if weighting == "paper":
    w = jnp.where(on, noise.weight, 0.0)
    return jnp.sum(jnp.where(on, w * ce, 0.0)), jnp.sum(w)
  if weighting != "llada":
    raise ValueError(f"weighting={weighting!r}: expected 'paper' or 'llada'")
  length = (jnp.full((response.shape[0],), response.shape[1], jnp.float32) if targets is None
            else jnp.sum(targets, axis=1).astype(jnp.float32))
  per_row = jnp.sum(jnp.where(on, ce, 0.0), axis=1) / noise.p_mask / jnp.maximum(length, 1.0)
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
