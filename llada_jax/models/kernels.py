"""Pallas TPU splash attention behind `layers.attention(implementation="splash")`.

Splash masks are static (full or causal); key padding travels as segment ids (a query of segment 1
sees keys of segment 1 only), which covers every mask the models build for an uncached forward:
none (Whisper encoder, Q-Former), key padding [B, 1, 1, S] (the LM), causal + key padding (LLaMA).
The kernel works in 128-long blocks: lengths are padded up, padded keys get segment 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

BLOCK = 128
# Tests run the kernel through the Pallas interpreter on CPU; on a TPU it is compiled.
INTERPRET = False


def _key_padding(mask: jax.Array | None, b: int, s: int) -> jax.Array:
  """A [B|1, 1, 1, S] mask as [B, S] bool; any other mask is a ValueError naming its shape."""
  if mask is None:
    return jnp.ones((b, s), bool)
  if mask.ndim != 4 or mask.shape[1:3] != (1, 1) or mask.shape[0] not in (1, b):
    raise ValueError(f"attention='splash': only key-padding masks of shape [B, 1, 1, S] (plus "
                     f"causal) are supported, got mask shape {tuple(mask.shape)}")
  return jnp.broadcast_to(mask[:, 0, 0, :], (b, s))


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
                     causal: bool = False) -> jax.Array:
  """q [B, T, H, D]; k, v [B, S, K, D] (H % K == 0); mask None or key padding [B, 1, 1, S]."""
  if jax.default_backend() != "tpu" and not INTERPRET:
    raise ValueError(f"attention='splash' (Pallas TPU splash attention) needs a TPU; have backend "
                     f"{jax.default_backend()!r}: use 'xla' or 'dot_product'")
  b, t, h, d = q.shape
  s, kv = k.shape[1], k.shape[2]
  keys = _key_padding(mask, b, s)
  tp, sp = -(-t // BLOCK) * BLOCK, -(-s // BLOCK) * BLOCK
  # Splash does not scale the scores; grouped kv heads are repeated to one per query head.
  q = jnp.pad(q / math.sqrt(d), ((0, 0), (0, tp - t), (0, 0), (0, 0))).astype(k.dtype)
  k = jnp.pad(jnp.repeat(k, h // kv, axis=2), ((0, 0), (0, sp - s), (0, 0), (0, 0)))
  v = jnp.pad(jnp.repeat(v, h // kv, axis=2), ((0, 0), (0, sp - s), (0, 0), (0, 0)))
  keys = jnp.pad(keys, ((0, 0), (0, sp - s)))
  one = splash.CausalMask((tp, sp)) if causal else splash.FullMask((tp, sp))
  blocks = splash.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK,
                             block_q_dkv=BLOCK, block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK,
                             block_q_dq=BLOCK, block_kv_dq=BLOCK)
  kernel = splash.make_splash_mha(splash.MultiHeadMask([one] * h), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=INTERPRET)

  def row(q, k, v, keys):  # [T, H, D] → the kernel's [H, T, D]
    seg = splash.SegmentIds(q=jnp.ones((tp,), jnp.int32), kv=keys.astype(jnp.int32))
    out = kernel(q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), segment_ids=seg)
    return out.swapaxes(0, 1)

  return jax.vmap(row)(q, k, v, keys)[:, :t].astype(v.dtype)
