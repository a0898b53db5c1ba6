"""OpenAI Whisper (encoder + decoder) in Flax NNX.

Attribute names mirror transformers' `WhisperForConditionalGeneration` (less its `model.` prefix) so
a converter maps checkpoints by name: torch `weight` is our `kernel` (Linear, transposed to [in,
out]; conv, [out, in, k] → [k, in, out]), `scale` (LayerNorm) or `embedding` (tables). The output
projection is tied to `decoder.embed_tokens`, as in every released Whisper.

The encoder's layers are one stack (`models.stacked`, run by `lax.scan`); the decoder, used
only for first-pass greedy decoding, keeps a list. Decoding keeps its KV cache as a plain pytree
(`DecoderCache`), not module state, so the whole greedy loop (`llada_jax.decoding.whisper_greedy`)
is one `lax.while_loop` with static shapes.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.models import stacked
from llada_jax.models.config import WhisperConfig
from llada_jax.models.layers import (
  Buffer,
  Embed,
  LayerNorm,
  Linear,
  attention,
  attention_kernel,
  check_array,
  dtype_of,
  param,
)
from llada_jax.parallel import sharding


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
  """Whisper's encoder position table: [sin | cos] halves, not interleaved."""
  if channels % 2:
    raise ValueError(f"sinusoids: channels must be even, got {channels}")
  inc = math.log(max_timescale) / (channels // 2 - 1)
  inv = np.exp(-inc * np.arange(channels // 2))
  t = np.arange(length)[:, None] * inv[None, :]
  return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # torch's nn.functional.gelu default is the erf form


class Conv1d(nnx.Module):
  """Channels-last 1-D convolution; kernel [k, in, out]."""

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int, stride: int,
               padding: int, dtype: str, param_dtype: str, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.kernel = param(rngs, init, (kernel_size, in_features, out_features),
                        dtype_of(param_dtype), (None, "conv_in", "embed"))
    self.bias = param(rngs, nnx.initializers.zeros, (out_features,), dtype_of(param_dtype),
                      ("embed",))
    self.stride, self.padding, self.dtype = stride, padding, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = dtype_of(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), self.kernel[...].astype(dtype), window_strides=(self.stride,),
        padding=[(self.padding, self.padding)], dimension_numbers=("NWC", "WIO", "NWC"))
    return y + self.bias[...].astype(dtype)


class PositionTable(nnx.Module):
  """Encoder positions: sinusoids at init, overwritten by a checkpoint's copy, never trained."""

  def __init__(self, length: int, features: int, *, param_dtype: str):
    self.embedding = Buffer(jnp.asarray(sinusoids(length, features), dtype_of(param_dtype)),
                            logical_axes=("positions", "embed"))


class WhisperAttention(nnx.Module):
  """Multi-head attention; k_proj has no bias (as in OpenAI's checkpoints)."""

  def __init__(self, d_model: int, heads: int, *, dtype: str, param_dtype: str, attention: str,
               rngs: nnx.Rngs):
    self.heads, self.head_dim = heads, d_model // heads
    self.kernel = attention_kernel(attention, dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Linear(d_model, d_model, axes=("embed", "q_heads"), use_bias=True, **kw)
    self.k_proj = Linear(d_model, d_model, axes=("embed", "q_heads"), use_bias=False, **kw)
    self.v_proj = Linear(d_model, d_model, axes=("embed", "q_heads"), use_bias=True, **kw)
    self.out_proj = Linear(d_model, d_model, axes=("q_heads", "embed"), use_bias=True, **kw)

  def _split(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

  def query(self, x: jax.Array) -> jax.Array:
    return self._split(self.q_proj(x))

  def key_value(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self._split(self.k_proj(source)), self._split(self.v_proj(source))

  def output(self, heads: jax.Array) -> jax.Array:
    return self.out_proj(heads.reshape(*heads.shape[:-2], -1))

  def __call__(self, x: jax.Array, source: jax.Array, *, causal: bool = False) -> jax.Array:
    return self.output(attention(self.query(x), *self.key_value(source), causal=causal,
                                 implementation=self.kernel))


class WhisperEncoderLayer(nnx.Module):
  def __init__(self, cfg: WhisperConfig, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
    self.self_attn = WhisperAttention(cfg.d_model, cfg.encoder_heads, attention=cfg.attention, **kw)
    self.self_attn_layer_norm = LayerNorm(cfg.d_model, **ln)
    self.fc1 = Linear(cfg.d_model, cfg.encoder_ffn_dim, axes=("embed", "mlp"), use_bias=True, **kw)
    self.fc2 = Linear(cfg.encoder_ffn_dim, cfg.d_model, axes=("mlp", "embed"), use_bias=True, **kw)
    self.final_layer_norm = LayerNorm(cfg.d_model, **ln)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.self_attn_layer_norm(x)
    x = x + self.self_attn(h, h)
    x = x + self.fc2(gelu(self.fc1(self.final_layer_norm(x))))
    return sharding.constrain(x, ("batch", "length", "act_embed"))


class WhisperEncoder(nnx.Module):
  def __init__(self, cfg: WhisperConfig, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.conv1 = Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, stride=1, padding=1, **kw)
    self.conv2 = Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1, **kw)
    self.embed_positions = PositionTable(cfg.max_source_positions, cfg.d_model,
                                         param_dtype=cfg.param_dtype)
    self.layers = stacked.stack(lambda: WhisperEncoderLayer(cfg, rngs), cfg.encoder_layers)
    self.layer_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)

  def __call__(self, mel: jax.Array) -> jax.Array:
    """mel [B, n_mels, T] (T even, ≤ max_mel_frames) → [B, T // 2, d_model]."""
    cfg = self.config
    check_array("mel", mel, ndim=3)
    frames = mel.shape[2]
    if mel.shape[1] != cfg.n_mels:
      raise ValueError(f"mel: expected {cfg.n_mels} mel bins in dim 1, got shape "
                       f"{tuple(mel.shape)}")
    if frames == 0 or frames % 2 or frames > cfg.max_mel_frames:
      raise ValueError(f"mel: expected an even frame count in (0, {cfg.max_mel_frames}], "
                       f"got shape {tuple(mel.shape)}")
    x = gelu(self.conv1(jnp.swapaxes(mel, 1, 2)))
    x = gelu(self.conv2(x))
    # Shorter-than-30 s input uses the table's first rows: the rows are per-frame, so a prefix of
    # the padded computation's positions is exactly what those frames saw.
    x = x + self.embed_positions.embedding[: frames // 2].astype(x.dtype)
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    x, _ = stacked.scan(self.layers, lambda layer, x, _: (layer(x), None), x)
    return self.layer_norm(x)


@flax.struct.dataclass
class DecoderCache:
  """Per decoder layer: self-attention K/V [B, max_len, H, Dh] and cross-attention K/V [B, S, H,
  Dh]."""

  self_k: tuple[jax.Array, ...]
  self_v: tuple[jax.Array, ...]
  cross_k: tuple[jax.Array, ...]
  cross_v: tuple[jax.Array, ...]

  @property
  def max_len(self) -> int:
    return self.self_k[0].shape[1]


class WhisperDecoderLayer(nnx.Module):
  def __init__(self, cfg: WhisperConfig, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
    self.self_attn = WhisperAttention(cfg.d_model, cfg.decoder_heads, attention=cfg.attention, **kw)
    self.self_attn_layer_norm = LayerNorm(cfg.d_model, **ln)
    self.encoder_attn = WhisperAttention(cfg.d_model, cfg.decoder_heads, attention=cfg.attention,
                                         **kw)
    self.encoder_attn_layer_norm = LayerNorm(cfg.d_model, **ln)
    self.fc1 = Linear(cfg.d_model, cfg.decoder_ffn_dim, axes=("embed", "mlp"), use_bias=True, **kw)
    self.fc2 = Linear(cfg.decoder_ffn_dim, cfg.d_model, axes=("mlp", "embed"), use_bias=True, **kw)
    self.final_layer_norm = LayerNorm(cfg.d_model, **ln)

  def _rest(self, x: jax.Array, cross_k: jax.Array, cross_v: jax.Array) -> jax.Array:
    h = self.encoder_attn_layer_norm(x)
    x = x + self.encoder_attn.output(attention(self.encoder_attn.query(h), cross_k, cross_v,
                                               implementation=self.encoder_attn.kernel))
    x = x + self.fc2(gelu(self.fc1(self.final_layer_norm(x))))
    return sharding.constrain(x, ("batch", "length", "act_embed"))

  def __call__(self, x: jax.Array, enc: jax.Array) -> jax.Array:
    h = self.self_attn_layer_norm(x)
    x = x + self.self_attn(h, h, causal=True)
    return self._rest(x, *self.encoder_attn.key_value(enc))

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, cross_k: jax.Array,
           cross_v: jax.Array, index: jax.Array, mask: jax.Array):
    """Write this step's K/V at `index` and attend over the whole (masked) cache."""
    h = self.self_attn_layer_norm(x)
    k, v = self.self_attn.key_value(h)
    at = (0, index, 0, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), at)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), at)
    # Splash masks are static; the step's query offset is not.
    kernel = "xla" if self.self_attn.kernel == "splash" else self.self_attn.kernel
    x = x + self.self_attn.output(attention(self.self_attn.query(h), k_cache, v_cache, mask,
                                            implementation=kernel))
    return self._rest(x, cross_k, cross_v), k_cache, v_cache


class WhisperDecoder(nnx.Module):
  def __init__(self, cfg: WhisperConfig, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.embed_tokens = Embed(cfg.vocab_size, cfg.d_model, axes=("vocab", "embed"), **kw)
    self.embed_positions = Embed(cfg.max_target_positions, cfg.d_model,
                                 axes=("positions", "embed"), **kw)
    self.layers = nnx.List([WhisperDecoderLayer(cfg, rngs) for _ in range(cfg.decoder_layers)])
    self.layer_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)

  def _check_ids(self, ids: jax.Array, offset: int = 0) -> None:
    check_array("decoder_ids", ids, ndim=2, dtypes=("integer",))
    limit = self.config.max_target_positions
    if offset + ids.shape[1] > limit:
      raise ValueError(f"decoder_ids: positions {offset}..{offset + ids.shape[1] - 1} exceed "
                       f"max_target_positions {limit} (shape {tuple(ids.shape)})")

  def _logits(self, x: jax.Array) -> jax.Array:
    return self.embed_tokens.attend(self.layer_norm(x)).astype(jnp.float32)

  def __call__(self, ids: jax.Array, enc: jax.Array) -> jax.Array:
    """ids [B, L] int, enc [B, S, d_model] → logits float32 [B, L, vocab] (causal)."""
    self._check_ids(ids)
    length = ids.shape[1]
    x = self.embed_tokens(ids) + self.embed_positions.embedding[:length].astype(
        dtype_of(self.config.dtype))
    for layer in self.layers:
      x = layer(x, enc)
    return self._logits(x)

  def init_cache(self, batch: int, max_len: int, enc: jax.Array) -> DecoderCache:
    cfg = self.config
    if not 0 < max_len <= cfg.max_target_positions:
      raise ValueError(f"init_cache: max_len {max_len} not in (0, max_target_positions "
                       f"{cfg.max_target_positions}]")
    check_array("enc_out", enc, ndim=3, last=cfg.d_model)
    if enc.shape[0] != batch:
      raise ValueError(f"enc_out: expected batch {batch}, got shape {tuple(enc.shape)}")
    shape = (batch, max_len, cfg.decoder_heads, cfg.d_model // cfg.decoder_heads)
    zeros = tuple(jnp.zeros(shape, dtype_of(cfg.dtype)) for _ in self.layers)
    cross = [layer.encoder_attn.key_value(enc) for layer in self.layers]
    return DecoderCache(self_k=zeros, self_v=zeros, cross_k=tuple(k for k, _ in cross),
                        cross_v=tuple(v for _, v in cross))

  def step(self, ids: jax.Array, cache: DecoderCache, index) -> tuple[jax.Array, DecoderCache]:
    """ids [B, t] at positions index..index+t-1 → (logits float32 [B, t, vocab], updated cache)."""
    max_len, t = cache.max_len, ids.shape[1]
    try:
      start = int(index)  # bounds are only checkable while `index` is concrete
    except (TypeError, jax.errors.ConcretizationTypeError):
      start = 0
    self._check_ids(ids, start)
    if start + t > max_len:
      raise ValueError(f"decoder_ids: positions {start}..{start + t - 1} exceed the cache "
                       f"length {max_len} (shape {tuple(ids.shape)})")
    index = jnp.asarray(index, jnp.int32)
    pos = jax.lax.dynamic_slice_in_dim(self.embed_positions.embedding[...], index, t, axis=0)
    x = self.embed_tokens(ids) + pos.astype(dtype_of(self.config.dtype))
    mask = (jnp.arange(max_len)[None, :] <= (index + jnp.arange(t))[:, None])[None, None]
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      x, k, v = layer.step(x, cache.self_k[i], cache.self_v[i], cache.cross_k[i], cache.cross_v[i],
                           index, mask)
      new_k.append(k)
      new_v.append(v)
    return self._logits(x), cache.replace(self_k=tuple(new_k), self_v=tuple(new_v))


class Whisper(nnx.Module):
  """Encoder–decoder with the output projection tied to `decoder.embed_tokens`."""

  def __init__(self, cfg: WhisperConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = WhisperEncoder(cfg, rngs)
    self.decoder = WhisperDecoder(cfg, rngs)

  def encode(self, mel: jax.Array) -> jax.Array:
    return self.encoder(mel)

  def __call__(self, mel: jax.Array, decoder_ids: jax.Array) -> jax.Array:
    return self.decoder(decoder_ids, self.encode(mel))

  def init_cache(self, batch: int, max_len: int, enc_out: jax.Array) -> DecoderCache:
    return self.decoder.init_cache(batch, max_len, enc_out)

  def decode_step(self, ids: jax.Array, cache: DecoderCache,
                  index) -> tuple[jax.Array, DecoderCache]:
    return self.decoder.step(ids, cache, index)


def encode_in_groups(model: Whisper, mel: jax.Array, rows: int | None) -> jax.Array:
  """`model.encode(mel)`, `rows` utterances at a time (a `lax.map` over row groups); None: all.

  On CPU the encoder's [B, H, 1500, 1500] attention scores are memory-bound: one row at a time keeps
  them 16× smaller and encodes a batch of 16 30 s utterances ~2× faster. Results are the same up to
  float rounding.

  On a mesh (under `sharding.use`) `rows` counts per data-parallel shard: each step encodes `rows`
  utterances of every shard, so no shard waits for another's rows (a shard holds a contiguous
  block of the batch; the groups take the same position in every block)."""
  b = mel.shape[0]
  ways = sharding.batch_ways()
  ways = ways if b % ways == 0 else 1
  per_shard = b // ways
  rows = per_shard if rows is None else math.gcd(per_shard, max(1, int(rows)))
  if rows >= per_shard:
    return model.encode(mel)
  groups = per_shard // rows
  rest = mel.shape[1:]
  # [B, …] = [ways, groups, rows, …] → [groups, ways × rows, …]: the mapped axis is unsharded.
  grouped = mel.reshape(ways, groups, rows, *rest).swapaxes(0, 1).reshape(groups, ways * rows,
                                                                         *rest)
  grouped = sharding.constrain(grouped, (None, "batch") + (None,) * len(rest))
  out = jax.lax.map(model.encode, grouped)
  out = out.reshape(groups, ways, rows, *out.shape[2:]).swapaxes(0, 1)
  return out.reshape(b, *out.shape[3:])
