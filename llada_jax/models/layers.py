"""Building blocks shared by Whisper, the Q-Former and the LM.

Weights are created with their logical axis names (`logical_axes` metadata, see `sharding.py`).
Parameters live in `param_dtype`; matmuls run in the config's compute `dtype`; normalisation
statistics are always taken in float32.
"""

from __future__ import annotations

import math
import typing as tp

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax.models.config import LoRAConfig

Axes = tuple[str | None, ...]
default_kernel_init = nnx.initializers.normal(0.02)


class Buffer(nnx.Variable):
  """A checkpoint-loaded array that is not trained (torch's `requires_grad_(False)` weight)."""


class Quantized(nnx.Variable):
  """A weight-only quantized array (int8 values, or their float scales): inference only, never
  trained or checkpointed (`models.quantize`)."""


# int8 scales per this many consecutive input features (the GPTQ/AWQ convention): on real SmolLM2
# per-output-channel scales agree with float on 97.99 % of next tokens, groups of 128 on 98.66 %.
INT8_GROUP = 128


def group_size(features: int, group: int | None) -> int:
  """The quantization group along an axis of `features` entries: `group` if it divides, else
  the largest shared divisor if it is still ≥ 32 (SmolLM2's width 576 → 64), else the whole
  axis (one scale per channel; also `group=None`)."""
  if group is None:
    return features
  g = math.gcd(features, group)
  return g if g >= min(32, group) else features


def quantize_int8(w: jax.Array, axis: int, group: int | None = INT8_GROUP
                  ) -> tuple[jax.Array, jax.Array]:
  """Symmetric absmax int8 of `w` with one float32 scale per `group` consecutive entries along
  `axis` (the contraction axis) → (int8 values shaped like `w`, scales shaped like `w` with
  `axis` shrunk to the number of groups)."""
  axis %= w.ndim
  n = w.shape[axis]
  g = group_size(n, group)
  grouped = w.astype(jnp.float32).reshape(*w.shape[:axis], n // g, g, *w.shape[axis + 1:])
  absmax = jnp.max(jnp.abs(grouped), axis=axis + 1, keepdims=True)
  # An all-zero group (a padded vocabulary row) gets scale 1, not a 0/0.
  scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
  q = jnp.clip(jnp.round(grouped / scale), -127, 127).astype(jnp.int8)
  return q.reshape(w.shape), jnp.squeeze(scale, axis + 1)


def dequantize_int8(q: jax.Array, scale: jax.Array, axis: int, dtype) -> jax.Array:
  """`quantize_int8`'s inverse in `dtype` (the group size is read off the two shapes)."""
  axis %= q.ndim
  groups = scale.shape[axis]
  grouped = q.reshape(*q.shape[:axis], groups, q.shape[axis] // groups, *q.shape[axis + 1:])
  return (grouped.astype(dtype) * jnp.expand_dims(scale, axis + 1).astype(dtype)).reshape(q.shape)


def dtype_of(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def param(rngs: nnx.Rngs | None, init, shape, dtype, axes: Axes, kind=nnx.Param) -> nnx.Variable:
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return kind(init(key, shape, dtype), logical_axes=axes)


class LoRA(nnx.Module):
  """Low-rank update `dropout(x) @ a @ b * alpha/r` (PEFT's layout, transposed to [in, out])."""

  def __init__(self, in_features: int, out_features: int, config: LoRAConfig, *, axes: Axes,
               dtype: str, param_dtype: str, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(in_features)  # PEFT: kaiming_uniform(a=√5) on A ⇒ U(±1/√fan_in)
    uniform = nnx.initializers.uniform(2 * bound)
    # The shift happens before the variable exists: assigning a traced value to a variable
    # (under nnx.eval_shape, as checkpoint loading builds its abstract model) asks the tracer for
    # its sharding, which walks the whole trace so far, once per adapter.
    self.a = param(rngs, lambda key, shape, dtype: uniform(key, shape, dtype) - bound,
                   (in_features, config.rank), dtype_of(param_dtype), (axes[0], "lora_rank"),
                   kind=nnx.LoRAParam)
    # B = 0, so a fresh adapter leaves the base model's outputs unchanged.
    self.b = param(rngs, nnx.initializers.zeros, (config.rank, out_features),
                   dtype_of(param_dtype), ("lora_rank", axes[1]), kind=nnx.LoRAParam)
    self.scale = config.scale
    self.dropout = nnx.Dropout(config.dropout, deterministic=True, rngs=rngs)
    self.dtype = dtype_of(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.dropout(x.astype(self.dtype))
    return (h @ self.a[...].astype(self.dtype)) @ self.b[...].astype(self.dtype) * self.scale

  def delta(self) -> jax.Array:
    return (self.a[...].astype(jnp.float32) @ self.b[...].astype(jnp.float32)) * self.scale


class Linear(nnx.Module):
  """y = x @ kernel (+ bias) (+ LoRA). kernel is [in, out] with logical `axes`."""

  def __init__(self, in_features: int, out_features: int, *, axes: Axes, use_bias: bool = False,
               dtype: str = "float32", param_dtype: str = "float32", rngs: nnx.Rngs,
               kernel_init=default_kernel_init):
    self.in_features, self.out_features = in_features, out_features
    self.axes = axes
    self.dtype, self.param_dtype = dtype, param_dtype
    self.kernel = param(rngs, kernel_init, (in_features, out_features), dtype_of(param_dtype), axes)
    self.bias = (param(rngs, nnx.initializers.zeros, (out_features,), dtype_of(param_dtype),
                       (axes[1],)) if use_bias else None)
    self.lora: LoRA | None = nnx.data(None)
    self.kernel_scale: Quantized | None = nnx.data(None)

  def add_lora(self, config: LoRAConfig, rngs: nnx.Rngs) -> None:
    self.lora = nnx.data(LoRA(self.in_features, self.out_features, config, axes=self.axes,
                     dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs))

  def merge_lora(self) -> None:
    """Fold the adapter into the kernel (for export and fast inference) and drop it."""
    if self.lora is None:
      return
    kernel = self.kernel[...]
    self.kernel[...] = (kernel.astype(jnp.float32) + self.lora.delta()).astype(kernel.dtype)
    self.lora = nnx.data(None)

  def quantize(self, group: int | None = INT8_GROUP) -> None:
    """int8 kernel with a scale per output channel and `group` input features (weight-only:
    activations stay float)."""
    if self.lora is not None:
      raise ValueError("Linear.quantize: LoRA adapters must be merged into the kernel first "
                       "(merge_lora=True)")
    if self.kernel_scale is not None:
      return
    axes = self.kernel.get_metadata().get("logical_axes")
    q, scale = quantize_int8(self.kernel[...], -2, group)  # [..., in, out] → [..., groups, out]
    self.kernel = Quantized(q, logical_axes=axes)
    # The groups axis stays whole on every mesh: it need not divide by the input's shards.
    self.kernel_scale = Quantized(scale, logical_axes=None if axes is None else
                                  (*axes[:-2], None, axes[-1]))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = dtype_of(self.dtype)
    kernel = self.kernel[...]
    # The int8 → float dequantization is elementwise on the kernel: XLA fuses it into the dot's
    # operand on GPU/TPU, so the float kernel is never held (one layer's at a time on CPU).
    kernel = (kernel.astype(dtype) if self.kernel_scale is None else
              dequantize_int8(kernel, self.kernel_scale[...], -2, dtype))
    y = jnp.dot(x.astype(dtype), kernel)
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    if self.lora is not None:
      y = y + self.lora(x)
    return y


class Embed(nnx.Module):
  """Token (or position) table [num, features]; `attend` is the tied output projection."""

  def __init__(self, num: int, features: int, *, axes: Axes = ("vocab", "embed"),
               dtype: str = "float32", param_dtype: str = "float32", rngs: nnx.Rngs,
               init=default_kernel_init):
    self.embedding = param(rngs, init, (num, features), dtype_of(param_dtype), axes)
    self.embedding_scale: Quantized | None = nnx.data(None)
    self.dtype = dtype

  def quantize(self, group: int | None = INT8_GROUP) -> None:
    """int8 table with a scale per row and `group` features: a looked-up token's vector, and
    for the tied head (`attend`) one output channel's."""
    if self.embedding_scale is not None:
      return
    axes = self.embedding.get_metadata().get("logical_axes")
    q, scale = quantize_int8(self.embedding[...], -1, group)  # [num, features] → [num, groups]
    self.embedding = Quantized(q, logical_axes=axes)
    self.embedding_scale = Quantized(scale, logical_axes=None if axes is None else
                                     (axes[0], None))

  def __call__(self, ids: jax.Array) -> jax.Array:
    dtype = dtype_of(self.dtype)
    rows = jnp.take(self.embedding[...], ids, axis=0)
    if self.embedding_scale is None:
      return rows.astype(dtype)
    return dequantize_int8(rows, jnp.take(self.embedding_scale[...], ids, axis=0), -1, dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    dtype = dtype_of(self.dtype)
    table = self.embedding[...]
    table = (table.astype(dtype) if self.embedding_scale is None else
             dequantize_int8(table, self.embedding_scale[...], -1, dtype))
    return jnp.dot(x.astype(dtype), table.T)


class LayerNorm(nnx.Module):
  def __init__(self, features: int, *, eps: float, param_dtype: str = "float32",
               use_bias: bool = True, rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(None, nnx.initializers.ones, (features,), dtype_of(param_dtype), ("norm",))
    self.bias = (param(None, nnx.initializers.zeros, (features,), dtype_of(param_dtype), ("norm",))
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, features: int, *, eps: float, param_dtype: str = "float32",
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(None, nnx.initializers.ones, (features,), dtype_of(param_dtype), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    # LLaMA casts back to the input dtype before the gain (HF LlamaRMSNorm); kept for bf16 parity.
    return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def attention_kernel(name: str, dtype: str) -> str:
  """A config's `attention` (configs.ATTENTION) → the kernel to run on this backend.

  "auto" is cuDNN flash attention on a GPU at bf16/fp16 compute, splash on a TPU, "xla" otherwise.
  A kernel the backend cannot run is a ValueError here, when the model is built."""
  backend = jax.default_backend()
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if name == "auto":
    return {"tpu": "splash", "gpu": "cudnn" if half else "xla"}.get(backend, "xla")
  if name == "cudnn" and (backend != "gpu" or not half):
    raise ValueError(f"attention='cudnn' (cuDNN flash attention) needs a GPU and compute dtype "
                     f"bfloat16/float16; have backend {backend!r}, dtype {dtype!r}: use 'xla' "
                     f"or 'dot_product'")
  if name == "splash" and backend != "tpu":
    raise ValueError(f"attention='splash' (Pallas TPU splash attention) needs a TPU; have backend "
                     f"{backend!r}: use 'xla' or 'dot_product'")
  if name not in ("xla", "dot_product", "cudnn", "splash"):
    raise ValueError(f"attention={name!r}: expected one of xla, dot_product, cudnn, splash, auto")
  return name


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
              causal: bool = False, implementation: str = "xla",
              probs_dropout: tp.Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """Scaled dot-product attention, grouped-query aware.

  q [B, T, H, D]; k, v [B, S, K, D] with H % K == 0; mask bool broadcastable to [B, H, T, S]
  (True = attend); `causal`: query i also sees only keys j ≤ i. Softmax in float32 whatever the
  compute dtype. `probs_dropout` (BERT's attention-probability dropout) is applied to the
  probabilities, which only "xla" materialises. `implementation`: an `attention_kernel` result.
  """
  if implementation == "splash":
    if probs_dropout is not None:
      raise ValueError("attention: probability dropout needs implementation 'xla', got 'splash'")
    from llada_jax.models.kernels import (
      splash_attention,  # Pallas TPU import, kept out of other runs
    )
    return splash_attention(q, k, v, mask, causal=causal)
  if implementation == "xla":
    if causal:
      tri = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
      mask = tri if mask is None else mask & tri
    return attention_blocks(q, [(k, v, mask)], probs_dropout=probs_dropout)
  if probs_dropout is not None:
    raise ValueError(f"attention: probability dropout needs implementation 'xla', got "
                     f"{implementation!r} (fused kernels never materialise the probabilities)")
  if implementation in ("dot_product", "cudnn"):
    if implementation == "cudnn" and mask is not None:
      # cuDNN takes the mask as a bias, which must span the query length ([B, 1, 1, S] fails).
      mask = jnp.broadcast_to(mask, (*mask.shape[:2], q.shape[1], k.shape[1]))
    # is_causal rather than a dense triangle: cuDNN then skips the masked tiles.
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal,
        implementation=None if implementation == "dot_product" else "cudnn")
  raise ValueError(f"attention: unknown implementation {implementation!r}")


def attention_blocks(q: jax.Array, blocks: tp.Sequence[tuple[jax.Array, jax.Array,
                                                               jax.Array | None]], *,
                     probs_dropout: tp.Callable[[jax.Array], jax.Array] | None = None
                     ) -> jax.Array:
  """Attention over the keys of several blocks, softmax over all of them at once (XLA einsums).

  q [B, T, H, D]; each block (k [B, S_i, K, D], v like k, mask broadcastable to [B, H, T, S_i] or
  None). A cached decode step attends the read-only cache and the step's own K/V as two blocks,
  so the cache is never rewritten (an update would copy the whole buffer every step).
  """
  b, t, h, d = q.shape
  kv = blocks[0][0].shape[2]
  q = q.reshape(b, t, kv, h // kv, d)
  scores = []
  for k, _, mask in blocks:
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(d)
    if mask is not None:
      s = k.shape[1]
      mask = jnp.broadcast_to(mask, (b, h, t, s)).reshape(b, kv, h // kv, t, s)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    scores.append(logits)
  v_dtype = blocks[0][1].dtype
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(v_dtype)
  if probs_dropout is not None:
    probs = probs_dropout(probs)
  out, start = None, 0
  for k, v, _ in blocks:
    part = jnp.einsum("bkgts,bskd->btkgd", probs[..., start:start + k.shape[1]], v)
    out = part if out is None else out + part
    start += k.shape[1]
  return out.reshape(b, t, h, d)


def check_array(name: str, x: tp.Any, *, ndim: int, dtypes: tuple[str, ...] = ("floating",),
                last: int | None = None) -> None:
  """Raise a ValueError naming `name` and its shape when `x` is not of the expected rank/dtype."""
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != ndim:
    raise ValueError(f"{name}: expected a rank-{ndim} array, got shape {shape}")
  kinds = {"floating": jnp.floating, "integer": jnp.integer, "bool": jnp.bool_}
  if not any(jnp.issubdtype(x.dtype, kinds[d]) for d in dtypes):
    raise ValueError(f"{name}: expected dtype {'/'.join(dtypes)}, got {x.dtype} (shape {shape})")
  if last is not None and shape[-1] != last:
    raise ValueError(f"{name}: expected last dim {last}, got shape {tuple(shape)}")
