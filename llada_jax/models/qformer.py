"""Window-level Q-Former projector (SALMONN, as used by Diffusion-ASR).

Whisper frames are cut into non-overlapping windows of `QFormerConfig.window_frames` (17 for 0.333
s); each window is summarised by `num_queries` learned queries through BERT layers (self-attention
over the queries, cross-attention to the window's frames, FFN, all post-LN), then a Linear maps the
queries to the LM width. 30 s of audio → 88 windows × 4 queries = 352 LM embeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax.models import stacked
from llada_jax.models.config import QFormerConfig
from llada_jax.models.layers import (
  LayerNorm,
  Linear,
  attention,
  attention_kernel,
  check_array,
  dtype_of,
  param,
)
from llada_jax.parallel import sharding


def cut_windows(frames: jax.Array, window: int) -> jax.Array:
  """[B, T, C] → [B * (T // window), window, C]; the remainder is dropped, as torch `unfold`
  does."""
  b, t, c = frames.shape
  n = t // window
  if n == 0:
    raise ValueError(f"encoder output of shape {tuple(frames.shape)} is shorter than one window "
                     f"({window} frames)")
  return frames[:, : n * window].reshape(b * n, window, c)


def dropout(c: QFormerConfig) -> nnx.Dropout:
  """BERT's dropout (hidden states and attention probabilities alike), active in train mode.

  Its RNG stream is its own, not drawn from the model's, so the weights' initialisation does not
  depend on whether dropout is on; the train step reseeds it per step with the model's other
  (default-tagged) streams.
  """
  return nnx.Dropout(c.dropout, deterministic=True,
                     rngs=nnx.Rngs(0) if c.dropout > 0 else None)


class BertAttention(nnx.Module):
  """BERT attention (dropout on the probabilities) + output (dense, dropout, residual,
  LayerNorm)."""

  def __init__(self, c: QFormerConfig, kv_width: int, *, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
    self.num_heads = c.num_heads
    self.query = Linear(c.hidden_size, c.hidden_size, axes=("qformer_embed", "qformer_heads"), **kw)
    self.key = Linear(kv_width, c.hidden_size, axes=("embed", "qformer_heads"), **kw)
    self.value = Linear(kv_width, c.hidden_size, axes=("embed", "qformer_heads"), **kw)
    self.dense = Linear(c.hidden_size, c.hidden_size, axes=("qformer_heads", "qformer_embed"), **kw)
    self.norm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
    self.probs_dropout = dropout(c)
    self.out_dropout = dropout(c)
    self.kernel = attention_kernel(c.attention, c.dtype)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, t, d = x.shape
    s = context.shape[1]
    h = self.num_heads
    q = self.query(x).reshape(b, t, h, d // h)
    k = self.key(context).reshape(b, s, h, d // h)
    v = self.value(context).reshape(b, s, h, d // h)
    # Every frame of a window is real: no mask. Fused kernels never materialise the
    # probabilities, so BERT's dropout on them (train mode, rate > 0) runs on the XLA einsums.
    if self.probs_dropout.deterministic or self.probs_dropout.rate == 0:
      out = attention(q, k, v, implementation=self.kernel)
    else:
      out = attention(q, k, v, probs_dropout=self.probs_dropout)
    out = out.reshape(b, t, d)
    return self.norm(self.out_dropout(self.dense(out)) + x)


class QFormerLayer(nnx.Module):
  def __init__(self, c: QFormerConfig, *, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
    self.self_attn = BertAttention(c, c.hidden_size, rngs=rngs)
    self.cross_attn = BertAttention(c, c.encoder_width, rngs=rngs)
    # The query FFN (BLIP-2's `intermediate_query`/`output_query`): the one applied to query tokens.
    self.fc1 = Linear(c.hidden_size, c.intermediate_size, axes=("qformer_embed", "qformer_mlp"),
                      **kw)
    self.fc2 = Linear(c.intermediate_size, c.hidden_size, axes=("qformer_mlp", "qformer_embed"),
                      **kw)
    self.ffn_norm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
    self.ffn_dropout = dropout(c)

  def __call__(self, x: jax.Array, frames: jax.Array) -> jax.Array:
    x = self.self_attn(x, x)
    x = self.cross_attn(x, frames)
    h = self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
    return self.ffn_norm(self.ffn_dropout(h) + x)


class WindowQFormer(nnx.Module):
  """Encoder frames [B, T, encoder_width] → LM embeddings [B, (T // window) * num_queries,
  out_dim]."""

  def __init__(self, config: QFormerConfig, *, rngs: nnx.Rngs):
    c = self.config = config
    # BLIP-2 / SALMONN initialise the queries with std = initializer_range (0.02).
    self.query_tokens = param(rngs, nnx.initializers.normal(0.02),
                              (1, c.num_queries, c.hidden_size), dtype_of(c.param_dtype),
                              (None, "queries", "qformer_embed"))
    self.input_norm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
    self.input_dropout = dropout(c)  # BertEmbeddings: LayerNorm, then dropout
    self.layers = stacked.stack(lambda: QFormerLayer(c, rngs=rngs), c.num_layers)
    self.proj = Linear(c.hidden_size, c.out_dim, axes=("qformer_embed", "embed"), use_bias=True,
                       dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)

  def num_embeddings(self, encoder_frames: int) -> int:
    return self.config.num_windows(encoder_frames) * self.config.num_queries

  def __call__(self, frames: jax.Array) -> jax.Array:
    c = self.config
    check_array("encoder frames", frames, ndim=3, last=c.encoder_width)
    b = frames.shape[0]
    windows = cut_windows(frames.astype(dtype_of(c.dtype)), c.window_frames)  # [B*N, W, C]
    x = jnp.broadcast_to(self.query_tokens[...].astype(windows.dtype),
                         (windows.shape[0], c.num_queries, c.hidden_size))
    x = self.input_dropout(self.input_norm(x))
    x, _ = stacked.scan(self.layers, lambda layer, x, _: (layer(x, windows), None), x)
    out = self.proj(x).reshape(b, -1, c.out_dim)
    return sharding.constrain(out, ("batch", "length", "act_embed"))
