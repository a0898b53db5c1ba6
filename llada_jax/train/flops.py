"""Analytic FLOPs of one train step, LoRA-aware: the numerator of MFU.

What is counted: matrix-multiply FLOPs (2 per multiply-add, as PaLM's and MaxText's MFU count them)
of every projection, convolution, attention score and weighted sum, the log-mel's mel-filter
projection and the vocabulary projection, over the whole global batch (padding included: the
device computes it).

What is not: elementwise work (norms, softmax, activations, RoPE, dropout, the loss, the optimizer
update) and the log-mel's FFT. At real sizes these are a few percent of the step; on the `tiny`
test model (48-wide LM, 64-wide encoder, 80 × 201 mel filters) they are about a quarter of what
XLA's `cost_analysis()` reports, which is why tests/test_flops.py checks the tiny configs against
the dot and convolution instructions of the compiled step, and the demo configs against XLA's
whole-program count as well.

The backward pass multiplies each forward matmul by what it has to produce:
- a frozen weight needs only the gradient of its input (one matmul of the forward's size), and
  none at all where no trained weight lies upstream (the frozen Whisper encoder and log-mel, the
  LM's token embeddings);
- a trained weight needs the input gradient and its own (two);
- attention scores and weighted sums (no weights) need both operands' gradients (two).
So a LoRA step costs about 2 forwards of the LM (3 with full rematerialisation), not the 3 that the
usual 6·N·tokens assumes.

Rematerialisation (`TrainConfig.remat`) repeats forward matmuls of each LM layer in the backward
pass: all of them under full remat (`True` / "full"). These are executed but are not model FLOPs,
so `StepFlops.model` leaves them out (MFU, as PaLM defines it) and `StepFlops.total` keeps them
(hardware FLOPs: what the device runs and what XLA counts).
"""

from __future__ import annotations

import dataclasses

from llada_jax.models.features import N_FFT
from llada_jax.train.config import TrainConfig

# LM-layer matmuls recomputed in the backward pass per remat policy: those whose outputs the
# backward reads and the policy did not save. Full remat recomputes all but down_proj (the layer's
# output is read only by the next layer; a LoRA on down_proj recomputes its x @ A, not its B).
# "dots_saveable" keeps the weight matmuls (no batch dims) and recomputes the attention scores
# (the softmax's backward reads the probabilities; the weighted sum's output is not read).
# "names"/"offload" keep the attention output and the MLP input, so q/k/v, the scores and gate/up
# are recomputed from them, and o_proj too (the post-attention norm's backward reads the residual
# sum it feeds).
_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "attention_scores")
_RECOMPUTED = {
    "full": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "attention",
             "down_proj.lora_a"),
    "dots_saveable": ("attention_scores",),
    "names": _NAMES,
    "offload": _NAMES,
}


def remat_policy(remat) -> str:
  """`TrainConfig.remat` as a policy name: a bool (True = full) or a policy string."""
  if remat in (False, None, "none"):
    return "none"
  if remat is True:
    return "full"
  if remat not in _RECOMPUTED:
    raise ValueError(f"remat={remat!r}: no FLOP count for this policy (known: none, "
                     f"{', '.join(_RECOMPUTED)})")
  return remat


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one optimizer step over the global batch, by part."""

  encoder: float  # log-mel projection + frozen Whisper encoder, forward only (0 from the cache)
  projector: float  # the window Q-Former and its projection, forward and backward
  lm: float  # the LM (with its vocabulary projection), forward and backward
  remat: float  # LM forward matmuls recomputed in the backward pass

  @property
  def model(self) -> float:
    """Model FLOPs: the numerator of MFU."""
    return self.encoder + self.projector + self.lm

  @property
  def total(self) -> float:
    """Hardware FLOPs: what the device executes (model + recomputation)."""
    return self.model + self.remat


def _mm(m: float, k: float, n: float) -> float:
  return 2.0 * m * k * n


def _linear(rows: float, k: float, n: float, *, trained: bool, grads_in: bool = True) -> float:
  """Forward + backward FLOPs of x[rows, k] @ W[k, n]; `grads_in`: x's gradient is needed."""
  return _mm(rows, k, n) * (1 + grads_in + trained)


def train_step_flops(cfg: TrainConfig, prompt_len: int, *, from_encoder: bool = False
                     ) -> StepFlops:
  """FLOPs of one train step of `cfg` with a `prompt_len`-token prompt; `from_encoder`: the step
  reads cached encoder outputs (`data.encoder_cache`) instead of audio."""
  m, b = cfg.model, cfg.batch_size
  w, q, lm = m.whisper, m.qformer, m.lm
  mel_frames = cfg.data.mel_frames
  frames = mel_frames // 2  # encoder frames after the stride-2 convolution
  full = cfg.full_finetune

  encoder = 0.0
  if not from_encoder:  # forward only: nothing upstream of it trains
    d = w.d_model
    mel = _mm(mel_frames, N_FFT // 2 + 1, w.n_mels)
    convs = _mm(mel_frames, w.n_mels * 3, d) + _mm(frames, d * 3, d)  # kernel 3, strides 1 and 2
    per_layer = (4 * _mm(frames, d, d) + 2 * _mm(frames, frames, d)
                 + 2 * _mm(frames, d, w.encoder_ffn_dim))
    encoder = b * (mel + convs + w.encoder_layers * per_layer)

  windows = b * q.num_windows(frames)
  nq, wf, h = q.num_queries, q.window_frames, q.hidden_size
  rows = windows * nq
  # Self-attention and the FFN on the queries; cross-attention keys/values from the window's
  # frames. The first layer's input is the learned queries (trained), so every input gradient is
  # needed down to them; the frames' gradient is not (the encoder is frozen).
  per_layer = (_linear(rows, h, h, trained=True) * 4  # self q, k, v, o
               + _linear(rows, h, h, trained=True) * 2  # cross q, o
               + _linear(windows * wf, q.encoder_width, h, trained=True, grads_in=False) * 2
               + 3 * _mm(rows, nq, h) * 2  # self scores + weighted sum, fwd + 2 bwd
               + 3 * _mm(rows, wf, h) * 2  # cross
               + _linear(rows, h, q.intermediate_size, trained=True) * 2)
  projector = q.num_layers * per_layer + _linear(rows, h, q.out_dim, trained=True)

  seq = prompt_len + cfg.audio_len + cfg.data.response_len
  tokens = b * seq
  d, hd = lm.d_model, lm.dim_per_head
  # LoRA adapters run (and train, as Params) under full_finetune too.
  targets = lm.lora.targets if lm.lora is not None else ()
  r = lm.lora.rank if lm.lora is not None else 0
  widths = {"q_proj": (d, lm.n_heads * hd), "k_proj": (d, lm.n_kv_heads * hd),
            "v_proj": (d, lm.n_kv_heads * hd), "o_proj": (lm.n_heads * hd, d),
            "gate_proj": (d, lm.mlp_hidden), "up_proj": (d, lm.mlp_hidden),
            "down_proj": (lm.mlp_hidden, d)}

  def forward(name: str) -> float:
    if name == "down_proj.lora_a":
      return _mm(tokens, lm.mlp_hidden, r) if "down_proj" in targets else 0.0
    if name == "attention":  # scores + weighted sum over the whole (padded) sequence
      return 2 * _mm(tokens, seq, lm.n_heads * hd)
    if name == "attention_scores":
      return _mm(tokens, seq, lm.n_heads * hd)
    k, n = widths[name]
    lora = _mm(tokens, k, r) + _mm(tokens, r, n) if name in targets else 0.0
    return _mm(tokens, k, n) + lora

  def train(name: str) -> float:
    if name == "attention":
      return 3 * forward(name)
    k, n = widths[name]
    f = _linear(tokens, k, n, trained=full)
    if name in targets:  # x @ A [k, r] @ B [r, n], both trained
      f += _linear(tokens, k, r, trained=True) + _linear(tokens, r, n, trained=True)
    return f

  parts = (*widths, "attention")
  lm_flops = lm.n_layers * sum(train(p) for p in parts)
  # The input embeddings are a gather; the logits are taken at the response positions only.
  trained_head = full and not cfg.freeze_embeddings
  lm_flops += _linear(b * cfg.data.response_len, d, lm.vocab_size, trained=trained_head)
  remat = lm.n_layers * sum(forward(p) for p in _RECOMPUTED.get(remat_policy(cfg.remat), ()))
  return StepFlops(encoder=encoder, projector=projector, lm=lm_flops, remat=remat)


# bf16 dense matmul peaks per chip (vendor data sheets), by substrings of `jax.Device.device_kind`.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100", 989.0), ("A100", 312.0),
    ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
  """The bf16 dense peak of one device of this kind (TFLOP/s), or None if unknown (e.g. CPU)."""
  for key, peak in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return peak
  return None


def measured_peak_tflops(dtype: str = "bfloat16", sizes: tuple[int, ...] | None = None,
                         repeats: int = 5) -> tuple[float, dict[int, float]]:
  """The best TFLOP/s of square `jnp.dot`s in `dtype` on the default device (a measured peak for
  MFU, in the same run as the step it divides): (best, {size: TFLOP/s}). Default sizes: 8192² and
  up on an accelerator (it needs big products to fill), 512²–2048² on a CPU."""
  import time

  import jax
  import jax.numpy as jnp

  if sizes is None:
    sizes = (512, 1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192, 16384)
  rates = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(n), (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot).lower(a, a).compile()
    jax.block_until_ready(dot(a, a))
    best = float("inf")
    for _ in range(repeats):  # noise only ever slows a run: keep the fastest
      t0 = time.perf_counter()
      jax.block_until_ready(dot(a, a))
      best = min(best, time.perf_counter() - t0)
    rates[n] = 2 * n ** 3 / best / 1e12
  return max(rates.values()), rates
