"""The analytic train-step FLOPs (llada_jax.train.flops) against what XLA compiles.

Two references, both from the compiled step of an abstract model (nothing is allocated):
- `hlo_matmul_flops`: 2 × multiply-adds of every dot and convolution instruction in the optimized
  HLO (loop bodies × their trip counts): exactly the work the analytic count claims to count, so
  it must agree on any config, including `tiny`, whose step is mostly elementwise work;
- XLA's `cost_analysis()["flops"]` (every instruction, elementwise included): where matmuls
  dominate, as in the demo configs, the analytic count must be within 10 % of it too.
"""

import contextlib
import dataclasses
import math
import re

import jax
import pytest
from flax import nnx

from llada_jax import config_files
from llada_jax.models import stacked
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import sharding
from llada_jax.train.config import TrainConfig
from llada_jax.train.flops import peak_tflops, remat_policy, train_step_flops
from llada_jax.train.step import Trainer

PROMPT_LEN = 20
_INST = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(?:\w+\[([\d,]*)\]\S*|\(.*?\))\s+"
                   r"([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def hlo_matmul_flops(hlo: str) -> tuple[float, bool]:
  """2 × multiply-adds of the dots and convolutions an optimized HLO module executes, and whether
  a loop holds some (XLA's cost_analysis counts a loop body once, whatever its trip count)."""
  shapes, comps, entry, current = {}, {}, None, None
  looped = []
  for ln in hlo.splitlines():
    if (m := _COMP.match(ln)) and "=" not in ln.split("(")[0]:
      current = comps.setdefault(m.group(1), [])
      entry = m.group(1) if ln.startswith("ENTRY") else entry
      continue
    if (m := _INST.match(ln)) and current is not None:
      name, dims, op, rest = m.groups()
      if dims is not None:
        shapes[name] = [int(d) for d in dims.split(",") if d]
      current.append((name, op, rest))

  def flops(comp: str) -> float:
    total = 0.0
    for name, op, rest in comps[comp]:
      args = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
      if op == "dot":
        lhs = shapes[args[0]]
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
        total += 2 * math.prod(shapes[name]) * math.prod(lhs[int(i)] for i in dims.split(",") if i)
      elif op == "convolution":
        kernel = shapes[args[1]]
        labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
        total += 2 * math.prod(shapes[name]) * math.prod(kernel) / kernel[labels.index("o")]
      elif op == "while":
        body = flops(re.search(r"body=%([\w.\-]+)", rest).group(1))
        if body:
          trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
          assert trips, f"{name}: a loop with matmuls and no known trip count"
          total += body * int(trips.group(1))
          looped.append(name)
      for called in re.findall(r"(?:calls|to_apply|branch_computations)=\{?%([\w.\-]+)", rest):
        total += flops(called)
    return total

  return flops(entry), bool(looped)


def compiled_step(name: str, from_encoder: bool, *, unroll: bool = True, **changes):
  """The compiled train step; with `unroll`, its layer stacks unrolled (no loop), so that XLA's
  cost_analysis sees every layer."""
  cfg = dataclasses.replace(config_files.load(name, TrainConfig), mesh=(1, 1, 1), **changes)
  mcfg = cfg.resolved_model()
  model = nnx.eval_shape(lambda: WhisperLLaDA(mcfg, rngs=nnx.Rngs(0)))
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer = Trainer(cfg, model, mesh, prompt_len=PROMPT_LEN, abstract=True,
                    from_encoder=from_encoder)
  with stacked.unrolled() if unroll else contextlib.nullcontext():
    return cfg, trainer.lower().compile()


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("name, from_encoder, changes", [
    ("tiny", False, {}),  # LoRA; log-mel and encoder in the step
    # layer scans (remat inside) within a scanned accumulation loop
    ("tiny", True, {"remat": "full", "grad_accum": 2, "unroll": False}),
    ("tiny", True, {"remat": "dots_saveable", "unroll": False}),
    ("tiny", True, {"remat": "names", "unroll": False}),
    ("tiny", True, {"full_finetune": True}),  # every LM weight trained, embeddings too
])
def test_tiny_counts_the_matmuls_xla_compiles(name, from_encoder, changes):
  cfg, compiled = compiled_step(name, from_encoder, **changes)
  ours = train_step_flops(cfg, PROMPT_LEN, from_encoder=from_encoder)
  hlo, looped = hlo_matmul_flops(compiled.as_text())
  assert ours.total == pytest.approx(hlo, rel=0.02), (ours, hlo)
  assert looped == (not changes.get("unroll", True))
  if not looped:  # the rest of XLA's count is elementwise work left out on purpose
    assert ours.total < xla_flops(compiled)
  assert (ours.remat > 0) == (remat_policy(cfg.remat) != "none")


@pytest.mark.parametrize("name, from_encoder", [("demo_llada", False), ("demo_llama", True)])
def test_demo_configs_within_ten_percent_of_xla(name, from_encoder):
  cfg, compiled = compiled_step(name, from_encoder)
  ours = train_step_flops(cfg, PROMPT_LEN, from_encoder=from_encoder)
  hlo, looped = hlo_matmul_flops(compiled.as_text())
  assert ours.total == pytest.approx(hlo, rel=0.02)
  assert not looped  # unrolled: cost_analysis counts every layer
  assert ours.total == pytest.approx(xla_flops(compiled), rel=0.10)


def test_lora_step_is_cheaper_than_full_finetune_and_peaks_by_device_kind():
  cfg = config_files.load("tiny", TrainConfig)
  lora = train_step_flops(cfg, PROMPT_LEN)
  full = train_step_flops(dataclasses.replace(cfg, full_finetune=True), PROMPT_LEN)
  assert full.lm > lora.lm and full.encoder == lora.encoder and full.projector == lora.projector
  assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("TPU v5 lite") == 197.0
  assert peak_tflops("cpu") is None
  with pytest.raises(ValueError, match="remat"):
    remat_policy("sometimes")
