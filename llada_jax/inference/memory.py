"""Will a model decode on one device? Weight bytes of the abstract model (exact) plus an estimate
of what decoding one batch of 30 s utterances adds (`llada-jax plan --inference`).

Nothing is allocated: the model is `nnx.eval_shape`d with its LoRA merged (dropped) and its
weights in the given dtype, then quantized under `jax.eval_shape` (`models.quantize`), so the
weight bytes are those `inference.open(..., quantize=)` would hold. Decoding is two phases that
never coexist: the Whisper encoder over the batch (its largest layer's activations), then the LM
(the KV cache of the whole prompt + audio + response sequence, the largest layer's activations
over it and the response logits). The peak is the weights plus the larger phase. The activation
terms count what XLA's einsum attention materialises (float32 scores and the probabilities over
every key), an upper bound for fused attention; XLA's own temporaries and the runtime's overheads
are not in it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.quantize import check_quantize, quantize, weight_bytes

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class DecodeShape:
  """One decoding batch: `batch` rows of `mel_frames` (3000 = 30 s) with a `prompt_len`-token chat
  prompt and a `response_len`-token response (the paper's gen_length 128)."""

  batch: int = 8
  mel_frames: int = 3000
  prompt_len: int = 20
  response_len: int = 128


def inference_config(config: WhisperLLaDAConfig, dtype: str) -> WhisperLLaDAConfig:
  """`config` as loaded for decoding: LoRA merged (no adapters), weights and compute in `dtype`."""
  kw = dict(dtype=dtype, param_dtype=dtype)
  return dataclasses.replace(
      config, whisper=dataclasses.replace(config.whisper, **kw),
      qformer=dataclasses.replace(config.qformer, **kw),
      lm=dataclasses.replace(config.lm, lora=None, **kw))


@functools.lru_cache(maxsize=4)  # tracing 8B-shaped stacks takes ~10 s; plans ask twice
def _abstract(config: WhisperLLaDAConfig, dtype: str) -> tuple[nnx.GraphDef, nnx.State]:
  from llada_jax.models.whisper_llada import WhisperLLaDA

  return nnx.split(nnx.eval_shape(lambda: WhisperLLaDA(inference_config(config, dtype),
                                                       rngs=nnx.Rngs(0))))


def abstract_weights(config: WhisperLLaDAConfig, dtype: str = "bfloat16",
                     mode: str = "none") -> nnx.State:
  """The abstract state (shapes and dtypes only) of the decoding model."""
  graphdef, state = _abstract(config, dtype)
  if check_quantize(mode) == "none":
    return state
  return jax.eval_shape(lambda s: nnx.split(quantize(nnx.merge(graphdef, s), mode))[1], state)


def decode_memory(config: WhisperLLaDAConfig, shape: DecodeShape = DecodeShape(), *,
                  dtype: str = "bfloat16", mode: str = "none") -> dict[str, int]:
  """Bytes on one device (no sharding) to decode `shape` with `config`: weights (exact, by part),
  the encoder and LM phases (estimates, see the module docstring) and the peak."""
  state = abstract_weights(config, dtype, mode)
  parts = {name: weight_bytes(state[name])["total"] for name in ("encoder", "projector", "lm")}
  c = jnp.dtype(dtype).itemsize
  b, w, q, lm = shape.batch, config.whisper, config.qformer, config.lm
  t = shape.mel_frames // 2  # encoder frames after the stride-2 convolution
  encoder = (b * t * (4 * w.d_model + w.encoder_ffn_dim) * c      # residual, norm, q/k/v, MLP
             + b * w.encoder_heads * t * t * (4 + c)    # float32 scores, probabilities
             + b * t * w.d_model * c)                             # the encoded output, kept
  audio = q.num_windows(t) * q.num_queries
  s = shape.prompt_len + audio + shape.response_len
  kv = 2 * lm.n_layers * b * s * lm.n_kv_heads * lm.dim_per_head * c
  layer = (b * s * (4 * lm.d_model + 3 * lm.mlp_hidden) * c
           + b * lm.n_heads * s * s * (4 + c))
  logits = b * shape.response_len * lm.vocab_size * 4
  lm_phase = kv + layer + logits + b * s * lm.d_model * c
  weights = sum(parts.values())
  return {"weights": weights, **{f"weights_{k}": v for k, v in parts.items()},
          "encoder_phase": encoder, "kv_cache": kv, "lm_phase": lm_phase,
          "sequence": s, "peak": weights + max(encoder, lm_phase)}
