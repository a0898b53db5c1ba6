"""LLaMA-shaped transformer: LLaDA (bidirectional) or LLaMA (causal, the Whisper-LLaMA baseline).

Attribute names follow HF LLaMA (`embed_tokens`, `layers[i].self_attn.q_proj`, `mlp.gate_proj`,
`norm`, `lm_head`); the converter maps LLaDA's own names onto them.

The layers are one stack (`models.stacked`): every block weight has a leading `layers` axis and
the stack runs as one `lax.scan` with the config's remat policy inside.

A `KVCache` serves both decoders: AR decoding writes each new token's K/V (`update_cache=True`);
diffusion decoding with a prefix cache (Fast-dLLM) computes the prompt + audio K/V once and then
runs every denoising step over the response only, attending to the cached prefix without writing.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llada_jax.models import stacked
from llada_jax.models.config import LMConfig, RopeScaling
from llada_jax.models.layers import (
  Embed,
  Linear,
  LoRA,
  RMSNorm,
  attention,
  attention_blocks,
  attention_kernel,
  check_array,
  dtype_of,
)
from llada_jax.parallel import sharding

KV_AXES = ("batch", "length", "act_kv_heads", None)  # one layer's cache buffer [B, S, K, D]


@flax.struct.dataclass
class KVCache:
  """K/V buffers of every layer [L, B, S, K, D] and which of the S key slots hold real tokens."""

  k: jax.Array
  v: jax.Array
  key_mask: jax.Array  # [B, S] bool; False for padding and for slots not yet written

  @property
  def max_len(self) -> int:
    return self.key_mask.shape[1]


def init_cache(config: LMConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  if max_len > config.max_seq_len:
    raise ValueError(f"cache max_len {max_len} exceeds LMConfig.max_seq_len {config.max_seq_len}")
  dtype = dtype or dtype_of(config.dtype)
  shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.dim_per_head)
  zeros = sharding.constrain(jnp.zeros(shape, dtype), (None, *KV_AXES))
  return KVCache(k=zeros, v=zeros, key_mask=jnp.zeros((batch, max_len), bool))


def rope_frequencies(config: LMConfig) -> jax.Array:
  dim = config.dim_per_head
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  if config.rope_scaling is not None:
    inv_freq = _llama3_scaling(inv_freq, config.rope_scaling)
  return inv_freq


def _llama3_scaling(inv_freq: jax.Array, s: RopeScaling) -> jax.Array:
  # Llama-3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp in between.
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotate-half RoPE. x [B, T, H, D], positions [B, T]."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


class Attention(nnx.Module):
  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    c = config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
    self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.dim_per_head
    self.causal = c.causal
    self.kernel = attention_kernel(c.attention, c.dtype)
    self.q_proj = Linear(c.d_model, c.n_heads * c.dim_per_head, axes=("embed", "q_heads"), **kw)
    self.k_proj = Linear(c.d_model, c.n_kv_heads * c.dim_per_head, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(c.d_model, c.n_kv_heads * c.dim_per_head, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(c.n_heads * c.dim_per_head, c.d_model, axes=("q_heads", "embed"), **kw)

  def __call__(self, x, positions, inv_freq, key_mask, layer_cache, cache_index,
               update_cache=True):
    """key_mask [B, S] over the keys (with a cache: the cache's mask with this window's written
    in). Returns the output and this window's K/V [B, T, K, D] (the caller writes them into the
    cache when `update_cache`)."""
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    q = sharding.constrain(q, ("batch", "length", "act_heads", None))

    if layer_cache is None:
      out = attention(q, k.astype(q.dtype), v.astype(q.dtype), key_mask[:, None, None, :],
                      causal=self.causal, implementation=self.kernel)
      return self._out(out), (k, v)
    cache_k, cache_v = (sharding.constrain(c, KV_AXES) for c in layer_cache)
    q_index, k_index = cache_index + jnp.arange(t), jnp.arange(cache_k.shape[1])
    if update_cache:  # AR decoding, prefix fill: write this window's K/V, attend over the cache
      at = (0, cache_index, 0, 0)
      keys = sharding.constrain(
          jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), at), KV_AXES)
      values = sharding.constrain(
          jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), at), KV_AXES)
      mask = key_mask[:, None, None, :]  # [B, 1, 1, S]
      if self.causal:
        mask = mask & (k_index[None, :] <= q_index[:, None])[None, None]
      # Splash masks are static; a cache's query offset is not.
      kernel = "xla" if self.kernel == "splash" else self.kernel
      out = attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask,
                      implementation=kernel)
      return self._out(out), (k.astype(cache_k.dtype), v.astype(cache_v.dtype))
    # Cached step (Fast-dLLM prefix / dual cache): the cache is read-only and this window's K/V are
    # a second key block; the window's own slots in the cache (stale K/V) are masked out. Writing
    # them in instead makes XLA copy the whole cache per layer per step, as the loop keeps the
    # unwritten cache. Short windows over a cache are memory-bound, so this stays on XLA einsums.
    window = (k_index >= cache_index) & (k_index < cache_index + t)
    cache_mask = (key_mask & ~window[None, :])[:, None, None, :]
    window_mask = jax.lax.dynamic_slice_in_dim(key_mask, cache_index, t, axis=1)[:, None, None, :]
    if self.causal:
      cache_mask = cache_mask & (k_index[None, :] <= q_index[:, None])[None, None]
      window_mask = window_mask & jnp.tril(jnp.ones((t, t), bool))[None, None]
    out = attention_blocks(q, [(cache_k.astype(q.dtype), cache_v.astype(q.dtype), cache_mask),
                               (k.astype(q.dtype), v.astype(q.dtype), window_mask)])
    return self._out(out), (k.astype(cache_k.dtype), v.astype(cache_v.dtype))

  def _out(self, heads: jax.Array) -> jax.Array:
    # Tagged for the "names" / "offload" remat policies: the backward reads it (o_proj's weight
    # gradient, LoRA's), and recomputing it costs the whole attention core.
    heads = checkpoint_name(heads.reshape(*heads.shape[:2], -1), "attn_out")
    return self.o_proj(heads)


class MLP(nnx.Module):
  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    c = config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
    self.gate_proj = Linear(c.d_model, c.mlp_hidden, axes=("embed", "mlp"), **kw)
    self.up_proj = Linear(c.d_model, c.mlp_hidden, axes=("embed", "mlp"), **kw)
    self.down_proj = Linear(c.mlp_hidden, c.d_model, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    h = sharding.constrain(h, ("batch", "length", "act_mlp"))
    return self.down_proj(h)


class Block(nnx.Module):
  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    c = config
    self.input_layernorm = RMSNorm(c.d_model, eps=c.rms_norm_eps, param_dtype=c.param_dtype)
    self.self_attn = Attention(c, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(c.d_model, eps=c.rms_norm_eps,
                                            param_dtype=c.param_dtype)
    self.mlp = MLP(c, rngs=rngs)

  def __call__(self, x, positions, inv_freq, key_mask, layer_cache, cache_index,
               update_cache=True):
    h, kv = self.self_attn(self.input_layernorm(x), positions, inv_freq, key_mask, layer_cache,
                           cache_index, update_cache)
    x = x + h
    x = x + self.mlp(checkpoint_name(self.post_attention_layernorm(x), "mlp_in"))
    return sharding.constrain(x, ("batch", "length", "act_embed")), kv


class Transformer(nnx.Module):
  """Token ids or input embeddings → float32 logits [B, T, vocab] (`__call__`, uncached).

  `hidden` runs the stack (with or without a KV cache) → (hidden states, cache | None); `logits`
  is the vocabulary head; `forward` is the `[prefix | response]` splice every model forward of
  decoding and training goes through → (logits at chosen rows, cache | None).
  """

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    c = self.config = config
    self.embed_tokens = Embed(c.vocab_size, c.d_model, dtype=c.dtype, param_dtype=c.param_dtype,
                              rngs=rngs)
    self.layers = stacked.stack(lambda: Block(c, rngs=rngs), c.n_layers)
    self.norm = RMSNorm(c.d_model, eps=c.rms_norm_eps, param_dtype=c.param_dtype)
    self.lm_head = nnx.data(None if c.tie_embeddings else Linear(
        c.d_model, c.vocab_size, axes=("embed", "vocab"), dtype=c.dtype,
        param_dtype=c.param_dtype, rngs=rngs))
    if c.lora is not None:
      add_lora(self, rngs)

  def logits(self, h: jax.Array) -> jax.Array:
    """Final-norm hidden states [B, T, D] → float32 logits [B, T, vocab] (tied or untied head)."""
    logits = self.lm_head(h) if self.lm_head is not None else self.embed_tokens.attend(h)
    return sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def embed(self, tokens: jax.Array) -> jax.Array:
    check_array("tokens", tokens, ndim=2, dtypes=("integer",))
    return self.embed_tokens(tokens)

  def __call__(self, tokens: jax.Array | None = None, *, embeds: jax.Array | None = None,
               positions: jax.Array | None = None, key_mask: jax.Array | None = None,
               logits_from: int = 0) -> jax.Array:
    """Float32 logits [B, T − logits_from, vocab] of one uncached forward (`hidden`'s arguments).

    `logits_from` (static) projects only positions [logits_from, T) onto the vocabulary: decoding
    and the losses only read the response's logits, and on small-LM / large-vocab models (SmolLM2:
    49k × 576) the head over the prompt + audio prefix would cost more than the transformer.
    """
    h, _ = self.hidden(tokens, embeds=embeds, positions=positions, key_mask=key_mask)
    return self.logits(h[:, logits_from:])

  def forward(self, prefix: jax.Array | None, response_ids: jax.Array, *,
              prefix_mask: jax.Array | None = None, response_mask: jax.Array | None = None,
              cache: KVCache | None = None, cache_index: jax.Array | int = 0,
              update_cache: bool = True, rows: str = "response"
              ) -> tuple[jax.Array, KVCache | None]:
    """The `[prefix | response]` splice: prefix embeddings [B, P, D] (prompt, + audio for speech;
    None: no prefix, e.g. a response window over a prefix already in `cache`) followed by the
    response tokens [B, R] → (float32 logits, the cache as `hidden` returns it).

    prefix_mask [B, P] / response_mask [B, R] bool: which positions are keys (default all True).
    `cache`, `cache_index`, `update_cache`: as `hidden` (the spliced sequence sits at slots
    [cache_index, cache_index + P + R)). `rows` (static) picks the rows projected onto the
    vocabulary, the others never are (at 126k vocab the full-sequence logits would dominate):
    "response" [P, P + R), each response position's own (masked diffusion); "shifted"
    [P − 1, P + R − 1), one earlier, so row i predicts response token i (AR); "all" [0, P + R).
    """
    check_array("response_ids", response_ids, ndim=2, dtypes=("integer",))
    if rows not in ("response", "shifted", "all"):
      raise ValueError(f"Transformer.forward: rows={rows!r}, expected 'response', 'shifted' or "
                       "'all'")
    b, r = response_ids.shape
    if prefix is None:
      p, embeds, key_mask = 0, self.embed(response_ids), response_mask
    else:
      p = prefix.shape[1]
      embeds = jnp.concatenate([prefix, self.embed(response_ids)], axis=1)
      key_mask = None
      if prefix_mask is not None or response_mask is not None:
        key_mask = jnp.concatenate(
            [jnp.ones((b, p), bool) if prefix_mask is None else prefix_mask,
             jnp.ones((b, r), bool) if response_mask is None else response_mask], axis=1)
    if rows == "shifted" and p < 1:
      raise ValueError("Transformer.forward: rows='shifted' needs a prefix (the row before the "
                       "response predicts its first token)")
    h, cache = self.hidden(embeds=embeds, key_mask=key_mask, cache=cache, cache_index=cache_index,
                           update_cache=update_cache)
    if rows != "all":
      start = p - 1 if rows == "shifted" else p
      h = h[:, start:start + r]
    return self.logits(h), cache

  def hidden(self, tokens: jax.Array | None = None, *, embeds: jax.Array | None = None,
             positions: jax.Array | None = None, key_mask: jax.Array | None = None,
             cache: KVCache | None = None, cache_index: jax.Array | int = 0,
             update_cache: bool = True) -> tuple[jax.Array, KVCache | None]:
    """Run the stack → (final-norm hidden states [B, T, D], cache | None).

    tokens [B, T] int or embeds [B, T, D]; positions [B, T] (default: cache_index + arange(T));
    key_mask [B, T] bool, True for real tokens (default all True). With `cache`, the new tokens sit
    at slots [cache_index, cache_index + T) and attend to every valid cached slot; the cache comes
    back updated (the very `cache` when `update_cache=False`). Without one, None.
    """
    c = self.config
    if (tokens is None) == (embeds is None):
      raise ValueError("Transformer: pass exactly one of tokens [B, T] or embeds [B, T, D]")
    if embeds is None:
      embeds = self.embed(tokens)
    else:
      check_array("embeds", embeds, ndim=3, last=c.d_model)
    b, t, _ = embeds.shape
    limit = cache.max_len if cache is not None else c.max_seq_len
    if t > limit:
      raise ValueError(f"sequence of shape {tuple(embeds.shape[:2])} is longer than the "
                       f"{'cache' if cache is not None else 'LMConfig.max_seq_len'} {limit}")
    if positions is None:
      positions = jnp.broadcast_to(cache_index + jnp.arange(t, dtype=jnp.int32), (b, t))
    if key_mask is None:
      key_mask = jnp.ones((b, t), bool)
    if cache is not None:
      full_mask = jax.lax.dynamic_update_slice(cache.key_mask, key_mask, (0, cache_index))
    else:
      full_mask = key_mask

    x = sharding.constrain(embeds.astype(dtype_of(c.dtype)), ("batch", "length", "act_embed"))
    inv_freq = rope_frequencies(c)
    run = lambda block, x, layer_cache: block(  # noqa: E731
        x, positions, inv_freq, full_mask, layer_cache, cache_index, update_cache)
    if cache is None:
      x, _ = stacked.scan(self.layers, lambda blk, x, _: (run(blk, x, None)[0], None), x,
                          remat=c.remat)
    elif not update_cache:
      # The cache is read-only: scanned over as an input, so no layer writes (or copies) it.
      x, _ = stacked.scan(self.layers, lambda blk, x, kv: (run(blk, x, kv)[0], None), x,
                          (cache.k, cache.v), remat=c.remat)
    else:
      # The cache rides in the carry; each layer writes only its window's slots, in place.
      def write(block, carry, i):
        x, keys, values = carry
        x, (k, v) = run(block, x, (keys[i], values[i]))
        at = (i, 0, cache_index, 0, 0)
        keys = jax.lax.dynamic_update_slice(keys, k[None], at)
        values = jax.lax.dynamic_update_slice(values, v[None], at)
        return (x, keys, values), None

      (x, new_k, new_v), _ = stacked.scan(self.layers, write, (x, cache.k, cache.v),
                                          jnp.arange(c.n_layers), remat=c.remat)
    h = self.norm(x)
    if cache is None or not update_cache:
      return h, cache
    return h, KVCache(k=new_k, v=new_v, key_mask=full_mask)


def add_lora(model: nnx.Module, rngs: nnx.Rngs, config=None) -> nnx.Module:
  """Attach LoRA adapters to the LM's target projections (config defaults to
  `model.config.lora`): one stacked adapter per target, its layers drawn in the order of a
  per-layer loop."""
  lm = model if isinstance(model, Transformer) else model.lm
  config = config or lm.config.lora
  if config is None:
    raise ValueError("add_lora: no LoRAConfig given and LMConfig.lora is None")
  blocks = lm.layers
  target = lambda name: getattr(  # noqa: E731
      blocks.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else blocks.mlp, name)
  adapters = {name: [] for name in config.targets}
  for _ in range(lm.config.n_layers):
    for name in config.targets:
      base = target(name)
      adapters[name].append(LoRA(base.in_features, base.out_features, config, axes=base.axes,
                                 dtype=base.dtype, param_dtype=base.param_dtype, rngs=rngs))
  for name, layers in adapters.items():
    target(name).lora = nnx.data(stacked.stack_modules(layers))
  return model


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Fold every LoRA adapter into its base kernel (in place)."""
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Linear):
      module.merge_lora()
  return model
