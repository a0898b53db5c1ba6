"""eval.py on device meshes: the same hyps.jsonl on meshes (1,1,1), (8,1,1), (2,2,2) and (1,2,4)
of the 8 simulated CPU devices for every strategy; rows per step scale with the data-parallel
ways; LoRA merged at load; a mesh or batch that cannot work exits 2 before compiling.

The models are tiny and random (weights ×SCALE for peaked distributions, LoRA B non-zero), saved
as checkpoints that eval.py reads; the data are 10 noise utterances of 0.5–1.9 s, batch 8, so the
second batch is mostly padding (support.build_models / build_data, conftest's session fixture
`eval_checkpoints`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from support import (
  BATCH,
  MESHES,
  RUNS,
  UTTS,
  assert_same_hyps,
  eval_args,
  read_hyps,
)

from llada_jax.cli import eval as cli
from llada_jax.inference import transcriber as transcriber_lib
from llada_jax.models import checkpoint
from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.transformer import merge_lora
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import sharding

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _forget_compilations():
  yield
  transcriber_lib._EXECUTABLES.clear()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, eval_checkpoints, eval_run):
  return {"tmp": tmp_path_factory.mktemp("mesh"), **eval_checkpoints, "eval_run": eval_run}


def _run(setup, run: str, *extra: str) -> Path:
  """eval.py's output folder for `run` with `extra` arguments; each is run once per session
  (conftest's `eval_run`)."""
  return setup["eval_run"](run, *extra)


@pytest.mark.parametrize("run", list(RUNS))
def test_every_mesh_gives_the_same_hyps(setup, run):
  """Token identity on every mesh (texts equal; Whisper's confidences to float rounding)."""
  got = {}
  for mesh in MESHES:
    out = _run(setup, run, "--mesh", mesh, "--batch-size", str(BATCH))
    got[mesh] = read_hyps(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["placement"]["mesh"] == [int(s) for s in mesh.split(",")]
    assert summary["num_utts"] == UTTS and summary["num_errors"] == 0
  want = got[MESHES[0]]
  assert len({r["hyp"] for r in want}) > 1, "outputs differ between utterances"
  for mesh in MESHES[1:]:
    assert_same_hyps(got[mesh], want, mesh)


def test_rows_per_step_scale_with_the_data_axis(setup, monkeypatch):
  """--per-device-batch 2: a step of 2 rows on one device, of 16 on (8,1,1) (2 per device); 10
  utterances take 5 steps there and 1 here, with the same texts."""
  from llada_jax.inference.llada import LLaDATranscriber
  from llada_jax.parallel.placement import Placement

  rows = []
  transcribe = LLaDATranscriber.transcribe
  monkeypatch.setattr(LLaDATranscriber, "transcribe",
                      lambda self, batch: rows.append(len(batch.ids)) or transcribe(self, batch))
  texts = {}
  for mesh, want in (("1,1,1", [2] * 5), ("8,1,1", [16])):
    rows.clear()
    out = _run(setup, "ar", "--mesh", mesh, "--per-device-batch", "2")
    texts[mesh] = [r["hyp"] for r in read_hyps(out)]
    assert rows == want
    placement = json.loads((out / "summary.json").read_text())["placement"]
    assert placement["batch_size"] == want[0] and placement["per_device_batch"] == 2
  assert texts["8,1,1"] == texts["1,1,1"]
  mesh = Placement.create((8, 1, 1))
  assert mesh.batch_sharding(2).shard_shape((16, 32000)) == (2, 32000)


def test_lora_is_merged_once_at_load(setup):
  """The adapters are folded into the kernels (placed by the rules); the merged model's logits
  move from the adapters' by float rounding, no more than placing the model on another mesh moves
  them, with the same argmax everywhere; eval.py's texts do not change."""
  from llada_jax.parallel.placement import Placement, has_lora, merged_lora

  rng = np.random.default_rng(0)
  inputs = (jnp.asarray(rng.standard_normal((4, 80, 200)), jnp.float32),
            jnp.asarray(rng.integers(3, 100, (4, 5)), jnp.int32),
            jnp.asarray(rng.integers(3, 100, (4, 8)), jnp.int32))
  logits = {}
  for shape in ((1, 1, 1), (2, 2, 2)):
    placement = Placement.create(shape)
    adapters = checkpoint.load(setup["models"]["llada"], mesh=placement.mesh,
                               rules=placement.rules)
    merged = merged_lora(adapters, placement)
    assert has_lora(adapters) and not has_lora(merged)
    q = merged.lm.layers.self_attn.q_proj
    rules = sharding.state_shardings(nnx.state(merged), placement.mesh, placement.rules)
    assert q.lora is None
    assert q.kernel[...].sharding == rules.lm.layers.self_attn.q_proj.kernel.get_value()
    base = adapters.lm.layers.self_attn.q_proj.kernel[...]
    assert float(jnp.abs(q.kernel[...] - base).max()) > 0.1  # the adapter is not a no-op
    with sharding.use(placement.mesh, placement.rules):
      for name, model in (("adapters", adapters), ("merged", merged)):
        logits[shape, name] = np.asarray(jax.jit(lambda m, *a: m(*a))(model, *inputs))
  want = logits[(1, 1, 1), "adapters"]
  merge = np.abs(logits[(1, 1, 1), "merged"] - want).max()
  mesh = np.abs(logits[(2, 2, 2), "adapters"] - want).max()
  print(f"max |logit| {np.abs(want).max():.3g}; max |Δ| merging LoRA {merge:.3g}, "
        f"mesh 2,2,2 vs one device {mesh:.3g}")
  assert 0 < merge <= 2 * mesh
  for got in logits.values():
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  # Unscaled weights (no ×SCALE amplification): the merge is float32 rounding.
  model = WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(3))
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
    if path[-1] == "b":
      v.set_value(jax.random.normal(jax.random.key(len(path)), v.shape) * 0.5)
  forward = jax.jit(lambda m, *a: m(*a))
  want = np.asarray(forward(model, *inputs))
  got = np.asarray(forward(merge_lora(model), *inputs))
  np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max(), rtol=0)
  texts = {}
  for extra in ([], ["--no-merge-lora"]):
    out = _run(setup, "diffusion", "--mesh", "1,1,1", "--batch-size", str(BATCH), *extra)
    texts[len(extra)] = [r["hyp"] for r in read_hyps(out)]
    lora = json.loads((out / "summary.json").read_text())["placement"]["lora"]
    assert lora == ("adapters" if extra else "merged")
  assert texts[0] == texts[1]


def test_dtype_override(setup):
  """--dtype bfloat16: every config's compute dtype, weights stored as they are."""
  from llada_jax import GreedySettings, LLaDASettings, open_transcriber

  settings = LLaDASettings(decoding=GreedySettings(max_new_tokens=8))
  t = open_transcriber(setup["models"]["llama"], settings, batch_size=4, mesh=(2, 2, 1),
                       dtype="bfloat16")
  cfg = t.model.config
  assert cfg.whisper.dtype == cfg.qformer.dtype == cfg.lm.dtype == "bfloat16"
  assert t.model.lm.layers.mlp.gate_proj.kernel[...].dtype == jnp.float32
  assert t.placement_info["dtype"] == "bfloat16" and t.batch_size == 4
  rows = read_hyps(_run(setup, "ar", "--mesh", "2,2,2", "--batch-size", str(BATCH), "--dtype",
                        "bfloat16"))
  assert len(rows) == UTTS and all(r["hyp"] is not None for r in rows)


@pytest.mark.parametrize("run", ["whisper", "semi_ar_dual_cache"])
def test_attention_override(setup, run, capsys):
  """--attention dot_product: every config's kernel, the same hyps as the checkpoint's (xla); a
  kernel this backend lacks is exit 2 naming it."""
  from llada_jax import open_transcriber

  want = read_hyps(_run(setup, run, "--mesh", "1,1,1", "--batch-size", str(BATCH)))
  out = _run(setup, run, "--mesh", "1,1,1", "--batch-size", str(BATCH), "--attention",
             "dot_product")
  assert_same_hyps(read_hyps(out), want, f"{run} dot_product")
  assert json.loads((out / "summary.json").read_text())["placement"]["attention"] == "dot_product"
  ckpt = setup["models"][RUNS[run][0]]
  cfg = open_transcriber(ckpt, batch_size=BATCH, attention="dot_product").model.config
  assert {c.attention for c in (cfg.whisper, cfg.qformer, cfg.lm)} == {"dot_product"} if (
      run != "whisper") else cfg.attention == "dot_product"
  assert cli.main(eval_args(setup["models"], setup["data"], setup["first"], run,
                            setup["tmp"] / f"never_splash_{run}", "--attention", "splash")) == 2
  assert "'splash' (Pallas TPU splash attention) needs a TPU" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--mesh", "16,1,1"], "needs 16 devices, have 8"),
    (["--mesh=-1,3,1"], "does not divide 8 devices"),
    (["--mesh", "8,1,1", "--batch-size", "4"],
     "batch size 4 is not divisible by the 8 data-parallel shards (data × fsdp) of mesh 8,1,1"),
])
def test_mesh_or_batch_that_does_not_fit_exits_2_before_compiling(setup, extra, message, capsys):
  compiled = len(transcriber_lib._EXECUTABLES)
  out = setup["tmp"] / "never"
  assert cli.main(eval_args(setup["models"], setup["data"], setup["first"], "diffusion", out,
                            *extra)) == 2
  assert message in capsys.readouterr().err
  assert len(transcriber_lib._EXECUTABLES) == compiled and not out.exists()
  with pytest.raises(SystemExit):
    cli.parse_args(["--checkpoint", "c", "--data", "d", "--out", "o", "--strategy", "ar",
                    "--mesh", "2,2"])
