#!/usr/bin/env python3
"""Train-step throughput: our jitted JAX step vs a PyTorch reference of the same model, same CPU.

    python benchmarks/bench_train.py [--steps 8] [--rounds 3] [--batch 8]
    python benchmarks/bench_train.py --shape llada8b [--rows 8] [--seconds 30] [--layers N] [--tiny]

Both sides do the same work per step: 16 kHz audio → Whisper log-mel → frozen Whisper encoder →
window Q-Former (2 BERT layers, cross-attention per 17-frame window) → Linear → bidirectional LLaMA
with LoRA (r 8, α 32, dropout 0.1) on q/k/v, over [prompt, audio, response]; masked-diffusion loss
(t ~ U(0,1), CE over masked response tokens); backward into LoRA + projector; global-norm clip 1.0;
AdamW. The reference is built from transformers modules (WhisperEncoder, Blip2QFormerModel,
LlamaModel with an all-True 4-D mask, i.e. bidirectional) plus a hand-written LoRA, in eager
float32. A third row runs our step with the layer stacks unrolled (`stacked.unrolled()`: one
traced body per layer instead of a `lax.scan`), the baseline of the scan. Timing alternates rounds
of each side so shared-machine load hits all alike; the table
reports the median step. Sizes are small (Whisper tiny.en shapes, a 4-layer 512-wide LM) so that a
run takes a minute or two.

`--shape llada8b` (for an accelerator; no PyTorch side): the paper's model, configs/paper.py —
whisper-large-v3 encoder (frozen), window Q-Former, LLaDA-8B (d 4096, 32 layers, 32 heads, MLP
12288, vocab 126464) with LoRA on q/k/v, bf16 compute, full remat (`--remat` picks another
policy, e.g. dots_saveable as configs/paper_h100x8.py) — with random weights created
already sharded over every device (no checkpoint), `--rows` rows of 20 prompt + 352 audio (30 s)
+ 128 response tokens. It reports tokens/s, the step time and MFU (analytic model FLOPs,
`llada_jax.train.flops`) against the bf16 matmul peak measured in the same run and against the
data-sheet peak of the device kind. `--layers N` cuts the LM and the encoder to N layers and
`--tiny` swaps in the tiny test widths, so that the mode can be checked on a CPU in seconds
(`--shape llada8b --tiny --seconds 2`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

SIZES = dict(
    mel_frames=400,  # 4 s: 200 encoder frames → 11 windows × 4 queries = 44 audio embeddings
    prompt=16, response=32,
    whisper=dict(n_mels=80, d_model=384, encoder_layers=4, encoder_heads=6, encoder_ffn_dim=1536),
    qformer=dict(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024),
    lm=dict(vocab_size=4096, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, mlp_hidden=1536),
)


def jax_side(batch: int, seed: int = 0):
  import jax
  import numpy as np
  from flax import nnx

  from llada_jax.models.config import (
    LMConfig,
    LoRAConfig,
    QFormerConfig,
    WhisperConfig,
    WhisperLLaDAConfig,
  )
  from llada_jax.models.whisper_llada import WhisperLLaDA
  from llada_jax.parallel import sharding
  from llada_jax.train.config import DataConfig, OptimizerConfig, TrainConfig
  from llada_jax.train.step import Trainer

  s = SIZES
  whisper = WhisperConfig(**s["whisper"], decoder_layers=1, decoder_heads=6, decoder_ffn_dim=64,
                          max_source_positions=s["mel_frames"] // 2)
  lm = LMConfig(**s["lm"], rope_theta=10000.0, max_seq_len=512, mask_id=s["lm"]["vocab_size"] - 1,
                eos_id=1, pad_id=1, eot_id=2, lora=LoRAConfig(rank=8, alpha=32.0, dropout=0.1))
  qformer = QFormerConfig(encoder_width=whisper.d_model, out_dim=lm.d_model, **s["qformer"])
  cfg = TrainConfig(
      model=WhisperLLaDAConfig(whisper=whisper, qformer=qformer, lm=lm), dtype="float32",
      param_dtype="float32", mesh=(1, 1, 1), batch_size=batch, steps=1000,
      optimizer=OptimizerConfig(warmup_steps=10),
      data=DataConfig(response_len=s["response"], mel_frames=s["mel_frames"]))
  model = WhisperLLaDA(cfg.resolved_model(), rngs=nnx.Rngs(seed))
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer = Trainer(cfg, model, mesh, prompt_len=s["prompt"])
  t0 = time.perf_counter()
  trainer.compile()
  compile_s = time.perf_counter() - t0
  state = trainer.init_state()
  rng = np.random.default_rng(seed)
  data = {"audio": (rng.normal(size=(batch, cfg.data.samples)) * 0.1).astype(np.float32),
          "prompt": rng.integers(3, 4000, (batch, s["prompt"])).astype(np.int32),
          "response": rng.integers(3, 4000, (batch, s["response"])).astype(np.int32),
          "response_len": np.full((batch,), s["response"], np.int32),
          "target_len": np.full((batch,), s["response"], np.int32),
          "audio_len": np.full((batch,), cfg.data.samples, np.int32),
          "valid": np.ones((batch,), bool)}
  gbatch = trainer.put_batch(data)
  box = {"state": state}

  def step():
    box["state"], metrics = trainer.train_step(box["state"], gbatch)
    return float(metrics["loss"])  # blocks until the step is done

  return step, trainer.seq_len, compile_s, data


class LoRALinear:
  """Wraps a frozen nn.Linear: y = W x + dropout(x) A B · α/r (PEFT's layout)."""

  @staticmethod
  def wrap(base, rank: int, alpha: float, dropout: float):
    import torch
    from torch import nn

    class _LoRA(nn.Module):
      def __init__(self):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.empty(base.in_features, rank))
        nn.init.uniform_(self.a, -1 / math.sqrt(base.in_features), 1 / math.sqrt(base.in_features))
        self.b = nn.Parameter(torch.zeros(rank, base.out_features))
        self.drop = nn.Dropout(dropout)
        self.scale = alpha / rank

      def forward(self, x):
        return self.base(x) + (self.drop(x) @ self.a) @ self.b * self.scale

    return _LoRA()


def torch_side(batch: int, data: dict, seed: int = 0):
  import torch
  import torch.nn.functional as F
  from torch import nn
  from transformers import Blip2QFormerConfig, Blip2QFormerModel, LlamaConfig, LlamaModel
  from transformers import WhisperConfig as HFWhisperConfig
  from transformers.models.whisper.modeling_whisper import WhisperEncoder

  from llada_jax.models import features

  torch.manual_seed(seed)
  s = SIZES
  w, q, lm_cfg = s["whisper"], s["qformer"], s["lm"]
  encoder = WhisperEncoder(HFWhisperConfig(
      num_mel_bins=w["n_mels"], d_model=w["d_model"], encoder_layers=w["encoder_layers"],
      encoder_attention_heads=w["encoder_heads"], encoder_ffn_dim=w["encoder_ffn_dim"],
      max_source_positions=s["mel_frames"] // 2, attn_implementation="sdpa")).eval()
  qformer = Blip2QFormerModel(Blip2QFormerConfig(
      hidden_size=q["hidden_size"], num_hidden_layers=q["num_layers"],
      num_attention_heads=q["num_heads"], intermediate_size=q["intermediate_size"],
      encoder_hidden_size=w["d_model"], cross_attention_frequency=1))
  query = nn.Parameter(torch.randn(1, 4, q["hidden_size"]) * 0.02)
  proj = nn.Linear(q["hidden_size"], lm_cfg["d_model"])
  lm = LlamaModel(LlamaConfig(
      vocab_size=lm_cfg["vocab_size"], hidden_size=lm_cfg["d_model"],
      num_hidden_layers=lm_cfg["n_layers"],
      num_attention_heads=lm_cfg["n_heads"], num_key_value_heads=lm_cfg["n_kv_heads"],
      intermediate_size=lm_cfg["mlp_hidden"], rope_theta=10000.0, attn_implementation="sdpa"))
  lm_head = nn.Linear(lm_cfg["d_model"], lm_cfg["vocab_size"], bias=False)
  for p in list(encoder.parameters()) + list(lm.parameters()) + list(lm_head.parameters()):
    p.requires_grad_(False)
  for layer in lm.layers:
    for name in ("q_proj", "k_proj", "v_proj"):
      setattr(layer.self_attn, name, LoRALinear.wrap(getattr(layer.self_attn, name), 8, 32.0, 0.1))
  trainable = [p for m in (qformer, proj, lm) for p in m.parameters() if p.requires_grad] + [query]
  opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
  filters = torch.tensor(features.mel_filters(w["n_mels"]), dtype=torch.float32)  # [201, n_mels]
  window = torch.hann_window(features.N_FFT)

  audio = torch.tensor(data["audio"])
  prompt = torch.tensor(data["prompt"]).long()
  response = torch.tensor(data["response"]).long()
  mask_id = lm_cfg["vocab_size"] - 1
  win = 17

  def log_mel(x):
    spec = torch.stft(x, features.N_FFT, features.HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # Whisper drops the last frame
    mel = torch.einsum("bkf,km->bmf", power, filters)
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log + 4.0) / 4.0

  def step():
    with torch.no_grad():
      enc = encoder(log_mel(audio)).last_hidden_state  # [B, T, 384]
    b, t, c = enc.shape
    n = t // win
    windows = enc[:, :n * win].reshape(b * n, win, c)
    qo = qformer(query_embeds=query.expand(b * n, -1, -1), encoder_hidden_states=windows)
    audio_emb = proj(qo.last_hidden_state).reshape(b, n * 4, -1)
    t_mask = torch.rand(b, 1)
    masked = torch.rand(b, response.shape[1]) < t_mask
    noisy = torch.where(masked, torch.full_like(response, mask_id), response)
    embeds = torch.cat([lm.embed_tokens(prompt), audio_emb, lm.embed_tokens(noisy)], dim=1)
    full = torch.ones(b, 1, embeds.shape[1], embeds.shape[1], dtype=torch.bool)  # bidirectional
    h = lm(inputs_embeds=embeds, attention_mask=full).last_hidden_state
    logits = lm_head(h[:, -response.shape[1]:])
    loss = F.cross_entropy(logits[masked], response[masked]) if masked.any() else logits.sum() * 0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    return loss.item()

  seq = prompt.shape[1] + (s["mel_frames"] // 2 // win) * 4 + response.shape[1]
  return step, seq


def llada8b(args) -> int:
  """The paper-shaped train step on every device of the default backend (see the docstring)."""
  import dataclasses

  import jax
  import numpy as np

  from llada_jax import config_files
  from llada_jax.models.config import WhisperLLaDAConfig
  from llada_jax.parallel import sharding
  from llada_jax.train import flops
  from llada_jax.train.config import TrainConfig
  from llada_jax.train.state import create_model
  from llada_jax.train.step import Trainer, rules_for

  base = config_files.load("paper", TrainConfig)
  model = WhisperLLaDAConfig.tiny_test() if args.tiny else base.model
  if args.layers:
    model = dataclasses.replace(
        model, lm=dataclasses.replace(model.lm, n_layers=args.layers),
        whisper=dataclasses.replace(model.whisper, encoder_layers=args.layers))
  mel_frames = int(round(args.seconds * 100 / 2)) * 2
  cfg = dataclasses.replace(
      base, model=model, batch_size=args.rows, mesh=(1, -1, 1), steps=1000,
      remat=args.remat or base.remat,
      data=dataclasses.replace(base.data, mel_frames=mel_frames, response_len=args.response))
  prompt_len = 20  # LLaDA's chat template around "Transcribe the audio:"
  mesh = sharding.make_mesh(sharding.mesh_shape(cfg.mesh, jax.device_count()))
  rules = rules_for(cfg)
  t0 = time.perf_counter()
  trainer = Trainer(cfg, create_model(cfg, mesh, rules), mesh, prompt_len=prompt_len, rules=rules)
  build_s = time.perf_counter() - t0
  compile_s = trainer.compile()
  state = trainer.init_state()
  trainer.release_init()
  rng = np.random.default_rng(0)
  b, r, v = args.rows, cfg.data.response_len, cfg.model.lm.vocab_size
  data = {"audio": (rng.normal(size=(b, cfg.data.samples)) * 0.1).astype(np.float32),
          "prompt": rng.integers(3, v - 2, (b, prompt_len)).astype(np.int32),
          "response": rng.integers(3, v - 2, (b, r)).astype(np.int32),
          "response_len": np.full((b,), r, np.int32), "target_len": np.full((b,), r, np.int32),
          "audio_len": np.full((b,), cfg.data.samples, np.int32), "valid": np.ones((b,), bool)}
  batch = trainer.put_batch(data)
  times = []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    loss = float(metrics["loss"])  # blocks until the step is done
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  n = jax.device_count()
  count = flops.train_step_flops(cfg, prompt_len)
  peak, rates = flops.measured_peak_tflops("bfloat16")  # per device: the dot runs on one
  sheet = flops.peak_tflops(jax.devices()[0].device_kind)
  achieved = count.model / step_s / n / 1e12
  m = cfg.model
  print(f"train step, {'tiny widths' if args.tiny else 'LLaDA-8B shape'}: LM d {m.lm.d_model} × "
        f"{m.lm.n_layers} layers (vocab {m.lm.vocab_size}), encoder {m.whisper.d_model} × "
        f"{m.whisper.encoder_layers}; {b} rows × {trainer.seq_len} tokens ({prompt_len} prompt + "
        f"{cfg.audio_len} audio + {r} response); {cfg.dtype}, remat {cfg.remat}; {n} × "
        f"{jax.devices()[0].device_kind}; median of {args.steps} steps after {args.warmup}")
  print(f"build {build_s:.1f} s, compile {compile_s:.1f} s, loss {loss:.3f}")
  print(f"step {step_s * 1e3:.1f} ms, {b * trainer.seq_len / step_s:.0f} tokens/s; "
        f"{count.model / 1e12:.3g} model TFLOP/step ({count.total / 1e12:.3g} with remat): "
        f"{achieved:.3g} TFLOP/s per device")
  print(f"MFU {achieved / peak:.1%} of the measured bf16 matmul peak {peak:.3g} TFLOP/s ("
        + ", ".join(f"{k}²: {t:.3g}" for k, t in rates.items()) + ")"
        + (f"; {achieved / sheet:.1%} of the data-sheet {sheet:g}" if sheet else ""))
  return 0


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=4, help="timed steps per round per side")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  g = ap.add_argument_group("--shape llada8b")
  g.add_argument("--shape", choices=("llada8b",), default=None,
                 help="the paper-shaped step on the default backend instead of the CPU table")
  g.add_argument("--rows", type=int, default=8, help="rows per step (global)")
  g.add_argument("--seconds", type=float, default=30.0, help="audio per row (30: 352 tokens)")
  g.add_argument("--response", type=int, default=128, help="response tokens per row")
  g.add_argument("--layers", type=int, default=None, help="LM and encoder layers (default: all)")
  g.add_argument("--tiny", action="store_true", help="tiny test widths (a CPU check)")
  g.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  g.add_argument("--remat", default=None,
                 help="remat policy, one of configs.REMAT_POLICIES (default: configs/paper.py's)")
  args = ap.parse_args(argv)
  if args.shape == "llada8b":
    return llada8b(args)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import torch

  torch.set_num_threads(args.threads)
  from llada_jax.models import stacked

  jax_step, seq, compile_s, data = jax_side(args.batch)
  with stacked.unrolled():  # the same program with one traced body per layer: the scan's baseline
    unrolled_step, _, unrolled_compile_s, _ = jax_side(args.batch)
  torch_step, torch_seq = torch_side(args.batch, data)
  assert seq == torch_seq, (seq, torch_seq)
  steps = {"jax": jax_step, "unrolled": unrolled_step, "torch": torch_step}
  for f in steps.values():  # warm-up: first-call allocations, torch's lazy init
    f()
    f()
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, f in steps.items():
      for _ in range(args.steps):
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
  tokens = args.batch * seq
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"train step, batch {args.batch} × {seq} tokens ({SIZES['prompt']} prompt + "
        f"{seq - SIZES['prompt'] - SIZES['response']} audio + {SIZES['response']} response), "
        f"float32, {os.cpu_count()} CPU cores; median of {args.rounds}×{args.steps} steps")
  print(f"{'':<26}{'step ms':>10}{'tokens/s':>12}{'vs torch':>10}")
  for name, label in (("jax", "JAX (ours, jit)"), ("unrolled", "JAX, layers unrolled"),
                      ("torch", "PyTorch eager (reference)")):
    print(f"{label:<26}{med[name] * 1e3:>10.1f}{tokens / med[name]:>12.0f}"
          f"{med['torch'] / med[name]:>9.2f}×")
  print(f"JAX compile (once): {compile_s:.1f} s scanned, {unrolled_compile_s:.1f} s unrolled")
  return 0


if __name__ == "__main__":
  sys.exit(main())
