"""Weight-only int8 for inference: every `Linear` kernel (LM, Whisper, Q-Former) and the input
token tables become int8 with one float32 scale per output channel and group of 128 input features
(`layers.INT8_GROUP`; ~3 % more bytes than one scale per channel, and on real SmolLM2 better
next-token agreement with float); activations stay in the compute dtype, and each matmul
dequantizes its int8 kernel on the fly (`layers.Linear.__call__`).

The output projection stays float (an untied `lm_head`, or the token table a tied head attends
with: Whisper's decoder, SmolLM2), as bitsandbytes' int8 leaves `lm_head` alone and llama.cpp's
k-quants keep `output.weight` at more bits: the logits are where rounding changes a greedy choice.
Measured here (benchmarks/RESULTS.md): with Whisper tiny.en's tied table in int8, two espeak-ng
sets of 50 and 120 utterances each gained a repetition loop that float32 does not have (WER 29.3
→ 62.5 %, 94.5 → 107.8 %); with it float, int8 gave 27.6 % and 83.3 %. `output=True` quantizes it
too (LLaDA-8B's head is 1 GiB of bf16).

    model = quantize(model)   # in place, after LoRA is merged (`placement.load_model` does
                              # both on the host, then places the int8 model)

Why hand-written and not Google's `qwix` (0.1.8, which installs cleanly beside jax 0.10.2 / flax
0.12.8): its NNX PTQ (`qwix.quantize_model`) quantizes a weight when the intercepted `__call__`
sees it in a matmul, on the module that owns it. Our layer stacks run as one `lax.scan` over
per-layer modules merged from slices (`models.stacked`), so on the tiny LM it quantized only the
unstacked `lm_head` and left all 7 stacked kernels float; the next call then failed in our
`Linear` (`ValueError: Unsupported type: QArray` from `.astype` on its `WithAux`), and only one
method is intercepted while decoding calls `forward` / `hidden` / `logits` / Whisper's encoder.
What would remain usable (`qwix.quantize` + `qwix.dot_general`, which dequantizes a float × int8
dot before it, as here) is the ten lines of absmax below, not worth a dependency the device
image lacks. Keeping the int8 values as ordinary NNX variables with their logical axes means
placement, sharding and layer stacking treat them like any other weight.

fp8 is not offered: XLA:CPU has no fp8 matmul, and it could not be measured here.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from llada_jax.models.layers import INT8_GROUP, Embed, Linear, Quantized
from llada_jax.models.transformer import Transformer
from llada_jax.models.whisper import WhisperDecoder

QUANTIZE = ("none", "int8")


def check_quantize(value: str | None) -> str:
  """A `quantize` setting (None → "none"); a ValueError names the choices."""
  value = "none" if value is None else value
  if value not in QUANTIZE:
    raise ValueError(f"quantize={value!r}: expected one of {', '.join(QUANTIZE)}")
  return value


def quantize(model: nnx.Module, mode: str = "int8", *, embeddings: bool = True,
             output: bool = False, group: int | None = INT8_GROUP) -> nnx.Module:
  """Quantize `model`'s weights in place (mode "none": unchanged) and return it.

  Every `Linear` kernel; with `embeddings`, also the input token tables (`embed_tokens`); with
  `output`, also the output projection (`output_projections`; float by default). Position tables,
  convolutions, norms and biases stay float: they are a small share of the bytes. A Linear still
  holding LoRA adapters is a ValueError (merge them first: the int8 kernel cannot take a float
  update). `group`: input features per scale (None: one scale per output channel;
  `layers.group_size` says what a width it does not divide gets)."""
  if check_quantize(mode) == "none":
    return model
  heads = set() if output else output_projections(model)
  for path, module in list(nnx.iter_graph(model)):
    if id(module) in heads:
      continue
    if isinstance(module, Linear):
      module.quantize(group)
    elif embeddings and isinstance(module, Embed) and path and path[-1] == "embed_tokens":
      module.quantize(group)
  return model


def output_projections(model: nnx.Module) -> set[int]:
  """ids of the modules that make logits: an LM's untied `lm_head` or its tied token table, and
  Whisper's decoder table (always tied)."""
  heads = set()
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Transformer):
      heads.add(id(module.lm_head if module.lm_head is not None else module.embed_tokens))
    elif isinstance(module, WhisperDecoder):
      heads.add(id(module.embed_tokens))
  return heads


def is_quantized(model: nnx.Module) -> bool:
  return bool(jax.tree.leaves(nnx.state(model, Quantized)))


def weight_bytes(model_or_state) -> dict[str, int]:
  """Bytes of a model's (or abstract state's) arrays: {"total", "quantized" (int8 values and
  their scales), "float" (everything else)}. Works on `nnx.eval_shape` models: no allocation."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  out = {"total": 0, "quantized": 0, "float": 0}
  for _, v in nnx.to_flat_state(state):
    if isinstance(v, nnx.RngState) or not hasattr(v, "dtype"):  # dropout streams: not weights
      continue
    n = math.prod(v.shape) * jax.numpy.dtype(v.dtype).itemsize
    out["total"] += n
    out["quantized" if isinstance(v, Quantized) else "float"] += n
  return out
