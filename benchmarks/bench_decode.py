"""Decoding speed: our jitted Whisper-LLaDA engine vs a Diffusion-ASR-style PyTorch loop and our AR.

  python benchmarks/bench_decode.py [--layers 4] [--vocab 8192] [--seconds 5] [--gen-length 64]
      [--scale 5] [--repeats 3] [--batch-repeats 2] [--batch 8] [--dtype float32]
  python benchmarks/bench_decode.py --shape llada8b [--layers N] [--tiny] [--seconds 30]
      [--gen-length 128] [--repeats 3]

`--shape llada8b` (for an accelerator): the paper's Whisper-LLaDA (whisper-large-v3 encoder,
Q-Former, LLaDA-8B: d 4096, 32 layers, 32 heads, MLP 12288, vocab 126464), random bf16 weights
made on the device (LM ×`--scale`), one utterance of 30 s (16 prompt + 352 audio + 128 response
tokens), batch 1. Three rows against our `decode` with dual cache + threshold 0.9 (one jitted
while loop): the issue's baseline, Diffusion-ASR's `transcribe` in PyTorch (`torch_transcribe`
below, transformers' LlamaForCausalLM of the LM's shape made on CUDA when torch sees a GPU, random
bf16 weights: its work is fixed, steps = gen_length, full-sequence logits as the authors compute
them; `--no-torch` leaves it out), and an authors'-style loop in JAX (ML-GSAI/LLaDA generate.py:
a Python loop of jitted full forwards over [prompt, audio, response], one per step,
low-confidence top-k commits, semi-AR blocks of 32; only the response positions' logits are
projected, which favours it), which isolates the algorithm from the framework. Printed: time
ratios, tokens per forward, and the JAX loop's forward MFU against a bf16 matmul peak measured in
the same run. `--layers N` / `--tiny` shrink the model for a quick CPU check (`--shape llada8b
--tiny --seconds 2 --gen-length 32`).

On an accelerator (jax's default backend is not the CPU) the PyTorch loop runs on CUDA too, in the
same dtype; there, e.g. `--layers 30 --vocab 49152 --gen-length 128 --seconds 10 --dtype bfloat16
--batch 32` times the full SmolLM2-135M shape at the paper's 128/128 setting.

One process, one random-weight model (SmolLM2-135M-shaped LM — d 576, 9/3 heads, MLP 1536 — cut
to `--layers` layers and a `--vocab` vocabulary; whisper tiny.en-shaped encoder; the paper's
Q-Former), `--seconds` of random log-mel audio per utterance, gen_length = steps (the paper's
128/128 setting, scaled down so that the whole run takes about 5 minutes on 2 cores). The vocabulary
is cut with the depth so that the output layer keeps a realistic share of the FLOPs (25 % here,
6 % in LLaDA-8B; SmolLM2's 49152 at 4 layers would make it 67 %, timing mostly one matmul).
Rows:

  PyTorch loop   Diffusion-ASR `transcribe` at batch 1: every step a full forward of
                 [prompt, audio embeds, response] through transformers' LlamaForCausalLM (our
                 LM's weights, exported through `HF_LLAMA`), called with `inputs_embeds` and an
                 additive all-zero 4-D float mask (bidirectional), softmax over the whole sequence,
                 low-confidence top-k with LLaDA's linear schedule. Its audio embeddings come from
                 our JAX encoder + Q-Former, computed once and not timed (this favours PyTorch).
  ours           `decode` / `deliberate` (encoder + Q-Former + denoising, all timed), batch 1 and 8.
  AR             `greedy` on the same composite with a causal LM (Whisper-LLaMA), KV-cached.

Random weights would end rows at a random EOS, so the work is fixed: the EOS rule is off
(`eos_rule=False`) and AR greedy gets an EOS id that argmax never returns (it always runs
gen_length tokens). LM weights are scaled by `--scale` so that the logits are peaked, as a trained
model's are, and threshold decoding commits several tokens per step: the `tokens/step` column is
gen_length / LM forwards per call (counted by a host callback in a separately compiled, untimed
run: a callback per forward would tax the AR loop most on an accelerator; the deliberation row
decodes a gen_length-token first-pass hypothesis, its time excludes that first pass).

Timing: everything is compiled ahead of time (the `compile s` column, excluded from the rest); the
measurements are interleaved round-robin over the configurations and each cell is a median.
PyTorch runs with its best CPU settings (`tune_torch`: flushed denormals, the faster thread count);
on CUDA with its defaults (SDPA attention).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
import typing as tp
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.convert import mapping as maps
from llada_jax.convert.convert import hf_llama_json
from llada_jax.decoding import DeliberationSettings, DiffusionSettings, decode, deliberate, greedy
from llada_jax.models.config import LMConfig, QFormerConfig, WhisperConfig, WhisperLLaDAConfig
from llada_jax.models.transformer import Transformer
from llada_jax.models.whisper_llada import WhisperLLaDA

PROMPT_LEN = 16  # LLaDA's chat template around "Transcribe the audio:" is about this long
MELS_PER_SECOND = 100


# --- models ------------------------------------------------------------------------------------
class CountingTransformer(Transformer):
  """Our LM, telling the host about every forward: the step count of a `lax.while_loop` is
  otherwise invisible. Only the untimed counting twin of a model has it (`counting_twin`); being a
  different class, it gives a different graphdef, so no jit cache mixes the two up."""

  forwards = 0

  def hidden(self, *args, **kw):  # every forward runs the stack once
    jax.debug.callback(CountingTransformer._tick)
    return super().hidden(*args, **kw)

  @staticmethod
  def _tick():
    CountingTransformer.forwards += 1


def build(args, causal: bool) -> WhisperLLaDA:
  dt = dict(dtype=args.dtype, param_dtype=args.dtype)
  lm = LMConfig.smollm2_135m(n_layers=args.layers, vocab_size=args.vocab, causal=causal,
                             tie_embeddings=False, mask_id=args.vocab - 1, max_seq_len=2048, **dt)
  whisper = dataclasses.replace(WhisperConfig.whisper_tiny_en(), **dt)
  cfg = WhisperLLaDAConfig(whisper=whisper, lm=lm,
                           qformer=QFormerConfig.paper(encoder_width=whisper.d_model,
                                                       out_dim=lm.d_model, **dt))
  model = WhisperLLaDA(cfg, rngs=nnx.Rngs(0))
  model.lm = Transformer(lm, rngs=nnx.Rngs(1))  # same seed for LLaDA and LLaMA
  # Random init gives near-uniform logits (every confidence ≈ 1/V), where a threshold never fires.
  scaled = jax.tree.map(lambda x: x * args.scale, nnx.state(model.lm, nnx.Param))
  nnx.update(model.lm, scaled)
  return model


def torch_dtype(c: LMConfig):
  import torch

  return torch.bfloat16 if c.dtype == "bfloat16" else torch.float32


def torch_llama_like(c: LMConfig, device: str = "cpu", dtype=None):
  """transformers' LlamaForCausalLM of our LM's shape (SDPA attention), random weights made on
  `device` in `dtype` (default float32)."""
  import torch
  import transformers

  hf = hf_llama_json(c, {})
  for key in ("architectures", "model_type"):
    hf.pop(key)
  default = torch.get_default_dtype()
  torch.set_default_dtype(dtype or torch.float32)
  try:
    with torch.device(device):
      return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf,
                                                                    attn_implementation="sdpa"))
  finally:
    torch.set_default_dtype(default)


def torch_llama(lm: Transformer, device: str):
  """transformers' LlamaForCausalLM holding exactly our LM's weights, in our LM's dtype."""
  import torch

  ref = torch_llama_like(lm.config)
  state = {n: torch.from_numpy(np.array(a, np.float32))
           for n, a in maps.export(maps.model_items(lm), maps.HF_LLAMA)}
  missing, unexpected = ref.load_state_dict(state, strict=False)
  if missing or unexpected:
    raise RuntimeError(f"torch reference: missing {missing}, unexpected {unexpected}")
  return ref.to(device=device, dtype=torch_dtype(lm.config)).eval()


# --- the PyTorch reference loop ----------------------------------------------------------------
def num_transfer_tokens(masked: int, steps: int) -> list[int]:
  """LLaDA's linear schedule: masked // steps each step, the remainder to the earliest steps."""
  return [masked // steps + (i < masked % steps) for i in range(steps)]


def torch_transcribe(ref, prefix, gen_length: int, steps: int, block_length: int, mask_id: int):
  """Diffusion-ASR `WhisperLLaDA.transcribe` (batch 1, temperature 0, low confidence, no CFG),
  minus the EOS rule (off on our side too). prefix: torch [1, P, D] prompt + audio embeddings."""
  import torch

  p = prefix.shape[1]
  embed = ref.get_input_embeddings()
  # Only the mask positions of x matter: prompt and audio ids are never read (their embeddings are).
  x = torch.zeros(1, p + gen_length, dtype=torch.long, device=prefix.device)
  x[:, p:] = mask_id
  x_emb = torch.cat([prefix, embed(x[:, p:])], dim=1)
  # transformers 5 adds a *boolean* 4-D mask to the scores as 0/1, so a float one.
  mask = torch.zeros(1, 1, x.shape[1], x.shape[1], dtype=prefix.dtype, device=prefix.device)
  blocks = gen_length // block_length
  for block in range(blocks):
    end = p + (block + 1) * block_length
    schedule = num_transfer_tokens(int((x[:, end - block_length:end] == mask_id).sum()),
                                   steps // blocks)
    for k in schedule:
      mask_index = x == mask_id
      if not mask_index.any():
        break
      logits = ref(inputs_embeds=x_emb, attention_mask=mask).logits
      x0 = logits.argmax(-1)
      x0_p = torch.softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
      x0_p[:, end:] = -np.inf
      x0 = torch.where(mask_index, x0, x)
      confidence = torch.where(mask_index, x0_p, -np.inf)
      index = torch.topk(confidence[0], k=k).indices
      x[0, index] = x0[0, index]
      x_emb[:, p:] = embed(x[:, p:])
  return x[:, p:]


def tune_torch(ref, prefix, gen_length: int) -> tuple[int | None, dict[int, float]]:
  """Give PyTorch its best CPU settings: returns the thread count it runs with and the median
  seconds of one forward for each count tried (None and {} on CUDA: nothing to tune).

  Denormals are flushed, as XLA's CPU backend does. Threads: OpenMP's barrier-synchronised
  parallel regions degrade badly on a shared, oversubscribed machine (on the 2-core VM with other
  jobs, 2 threads were 3–20× slower per forward than 1), so the faster of 1 and all cores is
  kept.
  """
  import torch

  if prefix.device.type != "cpu":
    return None, {}
  torch.set_flush_denormal(True)
  x_emb = torch.cat([prefix, torch.zeros(1, gen_length, prefix.shape[2])], dim=1)
  t = x_emb.shape[1]
  mask = torch.zeros(1, 1, t, t)
  counts = sorted({1, os.cpu_count() or 1})
  times = {n: [] for n in counts}
  with torch.inference_mode():
    for _ in range(3):  # interleaved, like everything else
      for n in counts:
        torch.set_num_threads(n)
        times[n].append(median_time(lambda: ref(inputs_embeds=x_emb, attention_mask=mask), 2))
  medians = {n: statistics.median(ts) for n, ts in times.items()}
  best = min(counts, key=medians.get)
  torch.set_num_threads(best)
  return best, medians


# --- timing ------------------------------------------------------------------------------------
def median_time(fn, repeats: int) -> float:
  """Median of `repeats` timed calls after one untimed."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@dataclasses.dataclass
class Config:
  name: str
  batch: int
  run: tp.Callable[[int], tp.Any]  # round index → output, computed (blocked on)
  compile_s: float = 0.0
  first: tp.Any = None  # output of round 0
  times: list[float] = dataclasses.field(default_factory=list)
  forwards: list[int] = dataclasses.field(default_factory=list)

  count: tp.Callable[[], int] | None = None  # untimed run of the counting executable → forwards

  def time_once(self, round_: int):
    start = time.perf_counter()
    out = self.run(round_)
    self.times.append(time.perf_counter() - start)
    if round_ == 0:
      self.first = out
      if self.count is not None:
        self.forwards.append(self.count())

  @property
  def seconds(self) -> float:
    return statistics.median(self.times)

  @property
  def utt_per_s(self) -> float:
    return self.batch / self.seconds


def counting_twin(model: WhisperLLaDA) -> WhisperLLaDA:
  twin = nnx.clone(model)
  twin.lm.__class__ = CountingTransformer  # same attributes, one more callback
  return twin


def aot(fn, model, *args) -> tuple[tp.Callable, float]:
  """Compile `fn(model, *args)` ahead of time: returns the executable's caller and compile seconds
  (without running it, which for a batch would cost as much as a measurement)."""
  graphdef, state = nnx.split(model)
  start = time.perf_counter()
  exe = jax.jit(lambda st, *a: fn(nnx.merge(graphdef, st), *a)).lower(state, *args).compile()
  return (lambda *a: exe(state, *a)), time.perf_counter() - start


def jax_config(name, batch, fn, model, mel, *args, twin=None) -> Config:
  """Round r decodes utterance r % len(mel) alone (batch 1) or the whole batch; same work each."""
  inputs = (mel[:batch], *(a[:batch] for a in args))
  call, secs = aot(fn, model, *inputs)
  counter = aot(fn, twin, *inputs)[0] if twin is not None else None

  def run(r: int):
    rows = slice(r % len(mel), r % len(mel) + 1) if batch == 1 else slice(None)
    return jax.block_until_ready(call(mel[rows], *(a[rows] for a in args)))

  def count_forwards() -> int:
    before = CountingTransformer.forwards
    jax.block_until_ready(counter(*inputs))
    jax.effects_barrier()  # the forward callbacks run asynchronously
    return CountingTransformer.forwards - before

  return Config(name, batch, run, compile_s=secs,
                count=count_forwards if twin is not None else None)


def strategies(args) -> dict[str, tp.Callable]:
  g = args.gen_length
  semi = dict(gen_length=g, steps=g, block_length=min(32, g), eos_rule=False)
  diffusion = {
      f"exact diffusion (block {g})": DiffusionSettings(g, g, g, eos_rule=False),
      f"semi-AR (block {semi['block_length']})": DiffusionSettings(**semi),
      "threshold τ=0.9 (semi-AR)": DiffusionSettings(**semi, threshold=0.9),
      "prefix cache (semi-AR)": DiffusionSettings(**semi, cache=True),
      "cache + threshold τ=0.9 (semi-AR)": DiffusionSettings(**semi, cache=True, threshold=0.9),
      "dual cache (semi-AR)": DiffusionSettings(**semi, cache=True, dual_cache=True),
      "dual cache + threshold τ=0.9 (semi-AR)": DiffusionSettings(**semi, cache=True,
                                                                  dual_cache=True, threshold=0.9),
  }
  out = {name: (lambda m, mel, p, s=s: decode(m, mel, p, settings=s))
         for name, s in diffusion.items()}
  chunks = DeliberationSettings(strategy="semi_ar", steps=g, num_chunks=4)
  out["deliberation (semi-AR, 4 chunks)"] = (
      lambda m, mel, p, hyp: deliberate(m, mel, p, hyp, jnp.full(hyp.shape[:1], g, jnp.int32),
                                        settings=chunks))
  return out


# --- FLOPs -------------------------------------------------------------------------------------
def forward_gflop(c: LMConfig, batch: int, tokens: int, logits_tokens: int) -> float:
  """Matmul FLOPs of one LM forward (2 per multiply-add): projections, attention scores and
  values, and the head over `logits_tokens`. Counted by hand: XLA's GPU cost analysis misses the
  batch dimension of some library calls (it reported 5× fewer FLOPs for batch 32 than 32 × batch
  1)."""
  q, kv = c.n_heads * c.dim_per_head, c.n_kv_heads * c.dim_per_head
  per_layer = c.d_model * (2 * q + 2 * kv) + 3 * c.d_model * c.mlp_hidden
  attention = 2 * 2 * tokens * tokens * q
  total = batch * (c.n_layers * (2 * tokens * per_layer + attention)
                   + 2 * logits_tokens * c.d_model * c.vocab_size)
  return total / 1e9


def step_gflops(model: WhisperLLaDA, prefix: jax.Array, gen_length: int, batch: int):
  """One exact denoising step's forward ([prefix, response] → response logits, as the engine
  runs it): its FLOPs and a caller."""
  lm = model.lm
  graphdef, state = nnx.split(lm)
  p = prefix.shape[1]
  embeds = jnp.concatenate([prefix[:batch],
                            jnp.zeros((batch, gen_length, prefix.shape[2]), prefix.dtype)], 1)

  def forward(st, x):
    return nnx.merge(graphdef, st)(embeds=x, logits_from=p)

  exe = jax.jit(forward).lower(state, embeds).compile()
  gflop = forward_gflop(lm.config, batch, p + gen_length, gen_length)
  return gflop, lambda: jax.block_until_ready(exe(state, embeds))


def matmul(n: int, dtype):
  a = jax.random.normal(jax.random.key(n), (n, n), dtype)
  dot = jax.jit(jnp.dot).lower(a, a).compile()
  return 2 * n ** 3 / 1e9, lambda: jax.block_until_ready(dot(a, a))


def flops_report(model: WhisperLLaDA, prefix: jax.Array, gen_length: int, batch: int,
                 rounds: int = 3) -> str:
  """Achieved GFLOP/s of one exact denoising step (median) against the device's matmul peak in
  the model's dtype.

  The peak is the best of a few square `jnp.dot` sizes and runs: XLA's CPU dot is fastest near
  512² (cache-resident blocks) and loses about a third by 2048², and noise only ever slows a run;
  an accelerator needs large products to fill.
  """
  steps = {b: step_gflops(model, prefix, gen_length, b) for b in (1, batch)}
  cpu = jax.default_backend() == "cpu"
  dtype = prefix.dtype
  dots = {n: matmul(n, dtype) for n in ((512, 1024, 2048) if cpu else (2048, 4096, 8192))}
  step_s = {b: [] for b in steps}
  dot_s = {n: [] for n in dots}
  for _ in range(rounds):  # interleaved
    for b, (_, fn) in steps.items():
      step_s[b].append(median_time(fn, 3 if b == 1 else 1))
    for n, (_, fn) in dots.items():
      dot_s[n].append(median_time(fn, 3))
  rates = {n: dots[n][0] / min(ts) for n, ts in dot_s.items()}
  best = max(rates, key=rates.get)
  parts = []
  for b, (gflop, _) in steps.items():
    sec = statistics.median(step_s[b])
    parts.append(f"batch {b}: {gflop:.2f} GFLOP in {sec * 1e3:.0f} ms = {gflop / sec:.0f} GFLOP/s "
                 f"({100 * gflop / sec / rates[best]:.0f} % of peak)")
  return (f"One exact denoising step ({prefix.shape[1] + gen_length}-token forward, response "
          f"logits; matmul FLOPs counted by hand): " + "; ".join(parts) +
          f". {jnp.dtype(dtype).name} matmul peak: {rates[best]:.0f} GFLOP/s (jnp.dot {best}²; " +
          ", ".join(f"{n}²: {r:.0f}" for n, r in rates.items()) + ")")


# --- report ------------------------------------------------------------------------------------
def table(configs: list[Config], torch_cfg: Config, ar: dict[int, Config], args) -> str:
  lines = ["| strategy | batch | utt/s | RTF | speed-up vs PyTorch loop | speed-up vs our AR | "
           "tokens/step | compile s |", "|---|---|---|---|---|---|---|---|"]
  for c in configs:
    tokens_per_step = (f"{args.gen_length / statistics.median(c.forwards):.2f}" if c.forwards
                       else "-")
    lines.append(
        f"| {c.name} | {c.batch} | {c.utt_per_s:.3f} | {1 / (c.utt_per_s * args.seconds):.3f} | "
        f"{c.utt_per_s / torch_cfg.utt_per_s:.2f}× | "
        f"{c.utt_per_s / ar[c.batch].utt_per_s:.2f}× | {tokens_per_step} | "
        f"{c.compile_s:.1f} |")
  return "\n".join(lines)


def goals(configs: list[Config], torch_cfg: Config, ar: dict[int, Config],
          batch: int) -> list[str]:
  def best(word, batch):
    return max((c for c in configs if word in c.name and c.batch == batch),
               key=lambda c: c.utt_per_s, default=None)

  out = []
  for word, target in (("exact diffusion", 5.0), ("cache + threshold", 30.0)):
    for b in (1, batch):
      c = best(word, b)
      if c is None:
        continue
      x = c.utt_per_s / torch_cfg.utt_per_s
      out.append(f"- {c.name}, batch {b}: {x:.2f}× the PyTorch loop (goal ≥ {target:g}×): "
                 f"{'achieved' if x >= target else 'NOT achieved'}")
  for b in (1, batch):
    top = max((c for c in configs if c.batch == b
                and not c.name.startswith(("deliberation", "AR"))),
               key=lambda c: c.utt_per_s)
    x = top.utt_per_s / ar[b].utt_per_s
    out.append(f"- standalone diffusion vs AR, batch {b}: best is {top.name} at {x:.2f}× AR "
               f"(goal ≥ 2×): {'achieved' if x >= 2 else 'NOT achieved'}")
  return out


# --- main --------------------------------------------------------------------------------------
def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def torch_check(ref, llada: WhisperLLaDA, prefix: jax.Array) -> float:
  """Max |logit difference| of the two LMs on one bidirectional forward."""
  import torch

  t = prefix.shape[1]
  x = torch.from_numpy(np.array(prefix[:1].astype(jnp.float32))).to(ref.device, ref.dtype)
  with torch.inference_mode():
    want = ref(inputs_embeds=x, attention_mask=torch.zeros(1, 1, t, t, dtype=ref.dtype,
                                                           device=ref.device)).logits
  want = want.float().cpu().numpy()
  return float(np.abs(want - np.asarray(llada.lm(embeds=prefix[:1]), np.float32)).max())


# --- the LLaDA-8B shape ---------------------------------------------------------------------------
def build_8b(args) -> WhisperLLaDA:
  """The paper's model (or the tiny one), bf16, LoRA merged away, random weights made by one
  jitted init on the default device, LM weights ×`scale`."""
  cfg = WhisperLLaDAConfig.tiny_test() if args.tiny else WhisperLLaDAConfig.paper()
  dt = dict(dtype="bfloat16", param_dtype="bfloat16")
  lm = dataclasses.replace(cfg.lm, lora=None, n_layers=args.layers or cfg.lm.n_layers, **dt)
  whisper = dataclasses.replace(cfg.whisper, **dt,
                                encoder_layers=args.layers or cfg.whisper.encoder_layers)
  cfg = dataclasses.replace(cfg, lm=lm, whisper=whisper,
                            qformer=dataclasses.replace(cfg.qformer, **dt))
  graphdef = nnx.split(nnx.eval_shape(lambda: WhisperLLaDA(cfg, rngs=nnx.Rngs(0))))[0]

  def init():
    model = WhisperLLaDA(cfg, rngs=nnx.Rngs(0))
    nnx.update(model.lm, jax.tree.map(lambda x: x * args.scale, nnx.state(model.lm, nnx.Param)))
    return nnx.split(model)[1]

  return nnx.merge(graphdef, jax.jit(init)())


def authors_loop(model: WhisperLLaDA, gen_length: int, block: int) -> tp.Callable:
  """ML-GSAI/LLaDA generate.py at batch 1, temperature 0, low-confidence remasking: every step a
  full forward of [prompt, audio, response]; (prompt, mel) → response ids."""
  graphdef, state = nnx.split(model.lm)
  mask_id = model.config.lm.mask_id
  prefix_fn = nnx.jit(lambda m, p, x: m.prefix_embeds(p, x))

  @jax.jit
  def step(state, prefix, x, lo, k):
    lm = nnx.merge(graphdef, state)
    embeds = jnp.concatenate([prefix, lm.embed(x).astype(prefix.dtype)], axis=1)
    logits = lm(embeds=embeds, logits_from=prefix.shape[1]).astype(jnp.float32)
    x0 = jnp.argmax(logits, -1)
    p = jnp.take_along_axis(jax.nn.softmax(logits, -1), x0[..., None], -1)[..., 0]
    pos = jnp.arange(x.shape[1])
    conf = jnp.where((x == mask_id) & (pos >= lo) & (pos < lo + block), p, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
    return jnp.where(rank < k, x0, x)

  steps = num_transfer_tokens(block, block)  # steps = gen_length: one token per step

  def run(prompt, mel):
    prefix = prefix_fn(model, prompt, mel)
    x = jnp.full((prompt.shape[0], gen_length), mask_id, jnp.int32)
    for b in range(gen_length // block):
      for k in steps:
        x = step(state, prefix, x, jnp.int32(b * block), jnp.int32(k))
    return jax.block_until_ready(x)

  return run


def llada8b(args) -> int:
  from llada_jax.train.flops import measured_peak_tflops, peak_tflops

  wall = time.perf_counter()
  seconds, g = args.seconds or 30.0, args.gen_length or 128
  block = min(32, g)
  model = build_8b(args)
  c = model.config
  frames = int(seconds * MELS_PER_SECOND) // 2 * 2
  mel = jax.random.normal(jax.random.key(1), (1, c.whisper.n_mels, frames), jnp.bfloat16)
  prompt = jax.random.randint(jax.random.key(2), (1, PROMPT_LEN), 0, c.lm.mask_id)
  settings = DiffusionSettings(gen_length=g, steps=g, block_length=block, eos_rule=False,
                               cache=True, dual_cache=True, threshold=0.9)
  ours = jax_config("dual cache + threshold τ=0.9 (ours)", 1,
                    lambda m, mel, p: decode(m, mel, p, settings=settings), model, mel, prompt,
                    twin=None if args.no_count else counting_twin(model))
  loop = authors_loop(model, g, block)
  t0 = time.perf_counter()
  loop(prompt, mel)  # compiles the step (and the prefix) once
  theirs = Config("authors'-style loop in JAX (full forward per step)", 1,
                  lambda r: loop(prompt, mel), compile_s=time.perf_counter() - t0, forwards=[g])
  prefix_len = PROMPT_LEN + c.qformer.num_windows(frames // 2) * c.qformer.num_queries
  rows = [theirs, ours]
  if not args.no_torch:  # the goal's baseline: Diffusion-ASR's transcribe in PyTorch, same device
    import torch

    # Random weights made on the GPU: the loop's work is fixed (steps = gen_length), so its time
    # does not depend on the values, and 8 B parameters never pass through the host.
    ref = torch_llama_like(c.lm, "cuda" if torch.cuda.is_available() else "cpu",
                           torch_dtype(c.lm)).eval()
    t_prefix = torch.randn(1, prefix_len, c.lm.d_model, dtype=ref.dtype, device=ref.device)

    def torch_run(r):
      with torch.inference_mode():
        out = torch_transcribe(ref, t_prefix, g, g, block, c.lm.mask_id)
      if ref.device.type == "cuda":
        torch.cuda.synchronize()
      return out

    t0 = time.perf_counter()
    torch_run(0)  # warm-up (CUDA kernels, allocator), untimed
    rows.insert(0, Config(f"PyTorch loop (Diffusion-ASR transcribe, {ref.device.type})", 1,
                          torch_run, compile_s=time.perf_counter() - t0, forwards=[g]))
  for r in range(args.repeats):  # interleaved
    for cfg in rows:
      cfg.time_once(r)
  forward_tflop = forward_gflop(c.lm, 1, prefix_len + g, g) / 1e3
  forward_s = theirs.seconds / g
  peak, rates = measured_peak_tflops("bfloat16")
  sheet = peak_tflops(jax.devices()[0].device_kind)
  print(f"{jax.devices()[0].device_kind}; jax {jax.__version__}; "
        f"{'tiny widths' if args.tiny else 'LLaDA-8B shape'}: LM d {c.lm.d_model} × "
        f"{c.lm.n_layers} layers, vocab {c.lm.vocab_size}; encoder {c.whisper.d_model} × "
        f"{c.whisper.encoder_layers}; bf16, random weights (LM ×{args.scale:g}); batch 1, "
        f"{seconds:g} s audio → {PROMPT_LEN} prompt + {prefix_len - PROMPT_LEN} audio + {g} "
        f"response tokens; steps = gen_length = {g}, blocks of {block}; EOS rule off; medians of "
        f"{args.repeats} interleaved runs\n")
  print("| decoder | s / utterance | tokens/s | forwards | tokens / forward | compile s |")
  print("|---|---|---|---|---|---|")
  for cfg in rows:
    fw = statistics.median(cfg.forwards) if cfg.forwards else None
    print(f"| {cfg.name} | {cfg.seconds:.3f} | {g / cfg.seconds:.1f} | "
          f"{'-' if fw is None else f'{fw:.0f}'} | {'-' if fw is None else f'{g / fw:.2f}'} | "
          f"{cfg.compile_s:.1f} |")
  print("\nspeed-up of ours (time ratio) over " + "; ".join(
      f"{cfg.name}: {cfg.seconds / ours.seconds:.2f}×" for cfg in rows if cfg is not ours))
  achieved = forward_tflop / forward_s
  print(f"the loop's full forward: {forward_tflop:.3g} TFLOP (matmuls) in {forward_s * 1e3:.1f} "
        f"ms = {achieved:.3g} TFLOP/s, MFU {achieved / peak:.1%} of the measured bf16 matmul peak "
        f"{peak:.3g} TFLOP/s (" + ", ".join(f"{n}²: {t:.3g}" for n, t in rates.items()) + ")"
        + (f"; {achieved / sheet:.1%} of the data-sheet {sheet:g}" if sheet else ""))
  print(f"(total wall time {time.perf_counter() - wall:.0f} s)")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shape", choices=("llada8b",), default=None,
                 help="the paper-shaped batch-1 comparison (see above) instead of the table")
  p.add_argument("--tiny", action="store_true", help="--shape llada8b with tiny test widths")
  p.add_argument("--layers", type=int, default=None, help="LM layers (default 4; 8B: all 32)")
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seconds", type=float, default=None,
                 help="audio per utterance (default 5; 8B: 30)")
  p.add_argument("--gen-length", type=int, default=None,
                 help="response length = steps (default 64; 8B: 128)")
  p.add_argument("--scale", type=float, default=5.0, help="LM weight scale (peaked logits)")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds at batch 1")
  p.add_argument("--batch-repeats", type=int, default=2, help="of which also at --batch")
  p.add_argument("--batch", type=int, default=8, help="the batched rows' batch size")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--only", nargs="+", default=None, metavar="WORD",
                 help="time only the strategies whose name contains one of these words (the "
                 "exact-diffusion row, the PyTorch loop and AR always run)")
  p.add_argument("--no-torch", action="store_true",
                 help="--shape llada8b without the PyTorch row (no torch installed)")
  p.add_argument("--no-count", action="store_true",
                 help="skip the separately compiled forward-counting runs (tokens/step: '-')")
  args = p.parse_args(argv)
  if args.shape == "llada8b":
    return llada8b(args)
  args.layers, args.seconds = args.layers or 4, args.seconds or 5.0
  args.gen_length = args.gen_length or 64
  import torch

  batch_n = args.batch
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

  wall = time.perf_counter()
  llada, llama = build(args, causal=False), build(args, causal=True)
  frames = int(args.seconds * MELS_PER_SECOND) // 2 * 2
  mel = jax.random.normal(jax.random.key(1), (batch_n, llada.config.whisper.n_mels, frames))
  # Prompt ids avoid the mask id (the last one).
  prompt = jax.random.randint(jax.random.key(2), (batch_n, PROMPT_LEN), 0, args.vocab - 1)
  g = args.gen_length

  # Ours, batch 1 and 8. EOS id −1: argmax never returns it, so AR always runs g tokens.
  ar_greedy = lambda m, mel, p: greedy(m, mel, p, max_new_tokens=g, eos_id=-1)
  twins = ({} if args.no_count else
           {id(m): counting_twin(m) for m in (llada, llama)})
  ar = {b: jax_config("AR greedy (causal LM, KV cache)", b, ar_greedy, llama, mel, prompt,
                      twin=twins.get(id(llama))) for b in (1, batch_n)}
  hyp = ar[batch_n].run(0)  # the first pass that deliberation corrects
  configs = []
  chosen = {n: fn for i, (n, fn) in enumerate(strategies(args).items())
            if i == 0 or args.only is None or any(w in n for w in args.only)}
  for batch in (1, batch_n):
    for name, fn in chosen.items():
      extra = (hyp,) if name.startswith("deliberation") else ()
      configs.append(jax_config(name, batch, fn, llada, mel, prompt, *extra,
                                twin=twins.get(id(llada))))
    configs.append(ar[batch])

  # PyTorch, batch 1, on the same prefix embeddings our engine builds.
  ref = torch_llama(llada.lm, device)
  prefix = nnx.jit(lambda m, p, x: m.prefix_embeds(p, x))(llada, prompt, mel)
  prefix_t = torch.from_numpy(np.array(prefix.astype(jnp.float32))).to(device=device,
                                                                       dtype=ref.dtype)
  logit_diff = torch_check(ref, llada, prefix)
  torch_threads, forward_s = tune_torch(ref, prefix_t[:1], g)
  mask_id = llada.config.lm.mask_id

  def torch_run(r: int):
    with torch.inference_mode():
      row = r % batch_n
      return torch_transcribe(ref, prefix_t[row:row + 1], g, g, g, mask_id).cpu().numpy()

  torch_cfg = Config("PyTorch loop (exact diffusion; audio embeds precomputed)", 1, torch_run)
  torch_run(0)  # warm-up: first-call allocations, as our compile is apart

  for r in range(args.repeats):  # round-robin, so that load changes hit every row alike
    for c in [torch_cfg] + configs:
      if c.batch == 1 or r < args.batch_repeats:
        c.time_once(r)
  torch_cfg.forwards = [g]  # not our LM: one forward per step by construction
  exact = configs[0]
  same = int((torch_cfg.first == np.asarray(exact.first)).sum())

  flops = flops_report(llada, prefix, g, batch_n)

  tokens = prefix.shape[1] + g
  tried = ", ".join(f"{n}: {s * 1e3:.0f} ms" for n, s in forward_s.items())
  if device == "cpu":
    print(f"\n{cpu_name()}, {os.cpu_count()} CPU cores; jax {jax.__version__} (default threads); "
          f"torch {torch.__version__} with {torch_threads} thread(s), the fastest forward of "
          f"({tried}); denormals flushed")
  else:
    print(f"\n{jax.devices()[0].device_kind}; jax {jax.__version__}; torch {torch.__version__} "
          f"on {torch.cuda.get_device_name()} (SDPA attention); {args.dtype}")
  print(f"LM: SmolLM2-135M shape cut to {args.layers} layers and vocab {args.vocab}, weights "
        f"×{args.scale:g}; whisper tiny.en-shaped encoder; {args.seconds:g} s audio → "
        f"{PROMPT_LEN} prompt + {prefix.shape[1] - PROMPT_LEN} audio + {g} response = {tokens} "
        f"tokens; gen_length = steps = {g}; EOS rule off; medians of {args.repeats} (batch 1) / "
        f"{args.batch_repeats} (batch {batch_n}) interleaved runs")
  print(f"PyTorch vs ours: max |logit diff| {logit_diff:.1e}; exact-decode tokens of utterance 0 "
        f"equal on {same}/{g}\n")
  print(table([torch_cfg] + configs, torch_cfg, ar, args))
  print(f"\n{flops}")
  print("\nGoals:")
  print("\n".join(goals(configs, torch_cfg, ar, batch_n)))
  print(f"\n(total wall time {time.perf_counter() - wall:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
