"""Training: config errors, sharded step = single-device step, NaN guard, exact resume, a SIGKILL
during a checkpoint save, and train.py end to end on a tiny espeak-ng corpus.

Compiled executables go to a persistent cache shared by this module's runs and subprocesses (the
session's, conftest's `xla_cache`), so the tiny train step compiles once here rather than once per
run.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llada_jax.config_files import ConfigError
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import sharding
from llada_jax.train import config as config_lib
from llada_jax.train import loop
from llada_jax.train.batches import real_tokens
from llada_jax.train.checkpoints import Checkpoints
from llada_jax.train.flops import train_step_flops
from llada_jax.train.optimizer import make_optimizer
from llada_jax.train.state import create_model
from llada_jax.train.step import Trainer, trainable_filter

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN = 7


def tiny(**changes) -> config_lib.TrainConfig:
  """configs/tiny.py with `changes`."""
  return dataclasses.replace(config_lib.load("tiny"), **changes)


# ---------------------------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module", autouse=True)
def compile_cache(xla_cache):
  """The session's persistent compilation cache (conftest's `xla_cache`) for this module
  (subprocesses get it through the env)."""
  try:  # private: the cache is set up once per process, so it must be reset to take a new folder
    from jax._src.compilation_cache import reset_cache
  except ImportError:
    reset_cache = lambda: None  # noqa: E731  (only slower without it)
  folder = xla_cache
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  reset_cache()
  yield folder
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  reset_cache()


def data_overrides(corpus) -> list[str]:
  return [f"data.train={corpus['train']}", f"data.dev={corpus['dev']}",
          f"data.tokenizer={corpus['tokenizer']}"]


def run_train_py(workdir, corpus, *extra, cache, popen=False):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ["XLA_FLAGS"])  # the suite's (conftest): in-process runs compare
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", "tiny", "--workdir", str(workdir),
         "--no-progress", "--set", *data_overrides(corpus), *extra]
  if popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(str(workdir) + ".stderr", "w"))
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def read_metrics(workdir) -> list[dict]:
  return [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(corpus, compile_cache, tmp_path_factory):
  """train.py, tiny preset, 4 steps without interruption (validation at 2 and 4, saves at 2, 4),
  steps 1-2 traced by the profiler (which changes no value)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  t0 = time.perf_counter()
  proc = run_train_py(workdir, corpus, "--profile-steps", "1:2", cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"workdir": workdir, "seconds": time.perf_counter() - t0, "stderr": proc.stderr}


@pytest.fixture(scope="module")
def tiny_model():
  # Built as train.py builds it (jitted, sharded init): the loop tests above leave its executable
  # in the compile cache.
  cfg = tiny()
  model = create_model(cfg, sharding.make_mesh((8, 1, 1)), sharding.ShardingConfig.full_fsdp())
  # LoRA B starts at 0; make it non-zero so gradients reach A as well.
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
    if path[-1] == "b":
      v.set_value(jax.random.normal(jax.random.key(len(path)), v.shape) * 0.05)
  return cfg, model


def random_batch(cfg, from_encoder: bool, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  b, r = cfg.batch_size, cfg.data.response_len
  batch = {"prompt": rng.integers(3, 120, (b, PROMPT_LEN)).astype(np.int32),
           "response": rng.integers(3, 120, (b, r)).astype(np.int32),
           "response_len": rng.integers(2, r + 1, (b,)).astype(np.int32),
           "audio_len": rng.integers(1, cfg.data.samples + 1, (b,)).astype(np.int32),
           "valid": np.array([True] * (b - 1) + [False])}
  # group_max targets, as BatchMaker makes them: each pad_group rows up to their longest
  g = cfg.data.pad_group
  batch["target_len"] = np.repeat(batch["response_len"].reshape(b // g, g).max(1), g)
  if from_encoder:
    batch["enc"] = rng.normal(size=(b, cfg.data.mel_frames // 2, 64)).astype(np.float32)
  else:
    batch["audio"] = (rng.normal(size=(b, cfg.data.samples)) * 0.1).astype(np.float32)
  return batch


# ---------------------------------------------------------------------------------------------
# Config.

@pytest.mark.parametrize("overrides, field", [
    (["mesh=3,-1,1"], "mesh"),
    (["mesh=4,1,1"], "mesh"),
    (["batch_size=4"], "batch_size"),
    (["data.train=none"], "data.train"),
    (["data.train=/nonexistent/folder"], "data.train"),
    (["data.train=/nonexistent/data.json"], "data.train"),
    (["data.dev=none"], "data.dev"),
    (["init_lm=/nonexistent/ckpt"], "init_lm"),
    (["data.tokenizer=/nonexistent/tok"], "tokenizer"),
])
def test_runtime_errors_come_before_compilation(overrides, field, tmp_path, monkeypatch):
  d = str(tmp_path)
  cfg = config_lib.load("tiny", [f"data.train={d}", f"data.dev={d}", f"data.tokenizer={d}",
                                 *overrides])
  (tmp_path / "tokenizer.json").write_text("{}")

  def no_model(*a, **k):
    raise AssertionError("a model was built before the config was checked")

  monkeypatch.setattr(loop, "create_model", no_model)
  with pytest.raises(ConfigError, match=field):
    loop.run(cfg, tmp_path / "w")


@pytest.mark.parametrize("override, field", [
    ("profile_steps=3,2", "profile_steps"), ("profile_steps=3", "profile_steps"),
    ("peak_tflops_per_device=0", "peak_tflops_per_device")])
def test_throughput_fields_are_checked(override, field):
  with pytest.raises(ConfigError, match=field):
    config_lib.load("tiny", [override])


def test_full_finetune_trains_everything_but_the_encoder():
  cfg = tiny()
  model = nnx.eval_shape(lambda: WhisperLLaDA(cfg.resolved_model(), rngs=nnx.Rngs(0)))
  for full, expect in ((False, {"projector", "lm"}), (True, {"projector", "lm"})):
    c = dataclasses.replace(cfg, full_finetune=full)
    _, params, _ = nnx.split(model, trainable_filter(c), ...)
    paths = [p for p, _ in nnx.to_flat_state(params)]
    assert {p[0] for p in paths} == expect
    lm = [p for p in paths if p[0] == "lm"]
    assert all("lora" in p for p in lm) != full
    assert any(p[:2] == ("lm", "embed_tokens") for p in paths) == full
  c = dataclasses.replace(cfg, full_finetune=True, freeze_embeddings=True)
  _, params, _ = nnx.split(model, trainable_filter(c), ...)
  paths = [p for p, _ in nnx.to_flat_state(params)]
  assert not any("embed_tokens" in p or "lm_head" in p for p in paths)
  assert any("mlp" in p and "lora" not in p for p in paths)
  assert any(p[0] == "projector" for p in paths)


def test_projector_lr_scale_scales_only_the_projector_updates():
  """Adam's first update is ±lr per weight: the Q-Former's must be `scale` × the LM's."""
  model = WhisperLLaDA(tiny().resolved_model(), rngs=nnx.Rngs(0))
  _, params, _ = nnx.split(model, trainable_filter(tiny()), ...)
  params = nnx.to_pure_dict(params)
  grads = jax.tree.map(jnp.ones_like, params)
  steps = {}
  for scale in (1.0, 8.0):
    o = config_lib.OptimizerConfig(peak_lr=1e-3, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                                   projector_lr_scale=scale)
    tx, _ = make_optimizer(tiny(optimizer=o))
    updates, _ = tx.update(grads, tx.init(params), params)
    steps[scale] = {k: float(jnp.abs(jax.tree.leaves(updates[k])[0]).max()) for k in updates}
  np.testing.assert_allclose(steps[1.0]["projector"], 1e-3, rtol=1e-4)
  np.testing.assert_allclose(steps[8.0]["projector"], 8e-3, rtol=1e-4)
  np.testing.assert_allclose(steps[8.0]["lm"], steps[1.0]["lm"], rtol=1e-6)
  with pytest.raises(ConfigError, match="projector_lr_scale"):
    config_lib.OptimizerConfig(projector_lr_scale=-1.0)

# ---------------------------------------------------------------------------------------------
# The loop: train.py, exact resume, NaN policy, SIGKILL during a save.

def test_train_py_end_to_end(straight_run, corpus, compile_cache):
  workdir = straight_run["workdir"]
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  cfg = config_lib.load("tiny")
  log = (workdir / "train.log").read_text()
  prompt_len = int(re.search(r"sequence \d+ = (\d+) prompt", log).group(1))
  flops = train_step_flops(cfg, prompt_len).model
  for r in records:
    assert {"step", "loss", "lr", "tokens_per_s", "grad_norm", "step_s", "data_wait_s",
            "tflops_per_device"} <= set(r)
    assert np.isfinite(r["loss"]) and r["tokens_per_s"] > 0
    # real tokens: at most the padded batch; each of the 8 rows has its prompt and some audio
    assert 8 * (prompt_len + 4) < r["tokens"] < cfg.batch_size * (prompt_len + cfg.audio_len +
                                                                  cfg.data.response_len)
    assert r["flops_per_step"] == pytest.approx(flops) and "mfu" not in r  # no CPU peak
    assert 0 <= r["data_wait_s"] < r["step_s"]
  assert "val_loss" in records[1] and "val_loss" in records[3]
  assert list((workdir / "profile").rglob("*.xplane.pb"))
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == ["2", "4"]
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  assert (workdir / "config.json").is_file()
  assert "compiled the train step in" in log
  # a second run into the same folder must be told to resume
  again = run_train_py(workdir, corpus, cache=compile_cache)
  assert again.returncode == 2 and "resume=True" in again.stderr


def test_resume_is_bit_identical(straight_run, corpus, tmp_path):
  cfg = config_lib.load("tiny", data_overrides(corpus))
  loop.run(cfg, tmp_path, stop_after=2, progress=False)
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
  summary = loop.run(cfg, tmp_path, resume=True, progress=False)
  assert summary["step"] == 4 and summary["best_step"] in (2, 4)
  assert read_metrics(tmp_path) and "resumed from step 2" in (tmp_path / "train.log").read_text()
  keys = ("step", "loss", "grad_norm", "lr", "val_loss")
  want = [{k: r.get(k) for k in keys} for r in read_metrics(straight_run["workdir"])]
  got = [{k: r.get(k) for k in keys} for r in read_metrics(tmp_path)]
  assert got == want


def test_their_data_file_trains_as_its_folder(straight_run, corpus, tmp_path):
  """data.train=FILE.json (Diffusion-ASR's format) listing the folder's utterances in its order:
  the same ids, so the same batches and the same first steps."""
  from llada_jax.data import librispeech

  utts = librispeech.scan_librispeech(corpus["train"]).utterances
  data = tmp_path / "train.json"
  data.write_text(json.dumps({"annotation": [{"path": u.path, "text": u.text, "task": "asr"}
                                             for u in utts]}))
  cfg = config_lib.load("tiny", [*data_overrides(corpus), f"data.train={data}"])
  loop.run(cfg, tmp_path / "w", stop_after=2, progress=False)
  keys = ("step", "loss", "grad_norm", "val_loss")
  want = [{k: r.get(k) for k in keys} for r in read_metrics(straight_run["workdir"])[:2]]
  assert [{k: r.get(k) for k in keys} for r in read_metrics(tmp_path / "w")] == want


def test_nan_policy_stop_names_the_step_and_saves_nothing(corpus, tmp_path, monkeypatch):
  real = Trainer.train_step

  def poisoned(self, state, batch):
    state, metrics = real(self, state, batch)
    if int(state["step"]) == 2:
      metrics = dict(metrics, finite=jnp.asarray(False), loss=jnp.asarray(np.nan))
    return state, metrics

  monkeypatch.setattr(Trainer, "train_step", poisoned)
  cfg = config_lib.load("tiny", [*data_overrides(corpus), "save_every=1", "eval_every=0"])
  with pytest.raises(loop.NonFiniteError, match="step 2"):
    loop.run(cfg, tmp_path / "stop", progress=False)
  assert Checkpoints(tmp_path / "stop" / "checkpoints", keep_last=3).all_steps() == [1]
  skip = dataclasses.replace(cfg, nan_policy="skip")
  summary = loop.run(skip, tmp_path / "skip", stop_after=3, progress=False)
  assert summary["skipped"] == 1 and summary["step"] == 3


def test_sigkill_during_a_save_resumes_from_the_newest_complete_checkpoint(
    straight_run, corpus, compile_cache, tmp_path):
  workdir = tmp_path / "run"
  ckpt = workdir / "checkpoints"
  # Same steps as the straight run (the LR schedule spans them), a save after every step.
  extra = ["save_every=1", "eval_every=0", "keep_last=10"]
  proc = run_train_py(workdir, corpus, *extra, cache=compile_cache, popen=True)
  caught = None
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      if ckpt.is_dir():
        names = os.listdir(ckpt)
        if any("tmp" in n for n in names) and any(n.isdigit() for n in names):
          os.kill(proc.pid, signal.SIGKILL)
          caught = names
          break
      time.sleep(0.001)
  finally:
    if proc.poll() is None and caught is None:
      proc.kill()
    proc.wait()
  assert caught is not None, "train.py ended before a save could be interrupted"
  names = os.listdir(ckpt)
  partial = [n for n in names if "tmp" in n]
  complete = sorted(int(n) for n in names if n.isdigit())
  assert partial and complete, names
  for n in complete:  # every listed step is committed
    assert (ckpt / str(n) / "commit_success.txt").is_file() or (ckpt / str(n) / "state").is_dir()

  manager = Checkpoints(ckpt, keep_last=10)
  assert manager.latest_step() == complete[-1]  # the half-written step is never picked up
  manager.close()

  done = run_train_py(workdir, corpus, *extra, "--resume", cache=compile_cache)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from step {complete[-1]}" in (workdir / "train.log").read_text()
  # orbax removes the partial folder in the background once a manager opens, before its first save
  assert not any("tmp" in n for n in os.listdir(ckpt))
  keys = ("step", "loss", "grad_norm", "lr")
  got = [{k: r[k] for k in keys} for r in read_metrics(workdir)]
  assert got == [{k: r[k] for k in keys} for r in read_metrics(straight_run["workdir"])]


# ---------------------------------------------------------------------------------------------
# The step on meshes.

@pytest.fixture(scope="module")
def reference(tiny_model):
  cfg, model = tiny_model
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer = Trainer(cfg, model, mesh, prompt_len=PROMPT_LEN, from_encoder=True)
  state = trainer.init_state()
  loss, grads = trainer.loss_and_grads(state, trainer.put_batch(random_batch(cfg, True)))
  return trainer, state, float(loss), jax.device_get(grads)


def assert_trees_close(got, want, atol=1e-5):
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert len(flat_got) == len(flat_want)
  for path, g in flat_got:
    np.testing.assert_allclose(np.asarray(g), np.asarray(flat_want[path]), atol=atol, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1)])
def test_sharded_loss_and_grads_equal_single_device(tiny_model, reference, shape):
  cfg, model = tiny_model
  _, _, want_loss, want_grads = reference
  assert {k for k in want_grads} == {"projector", "lm"}
  trainer = Trainer(cfg, model, sharding.make_mesh(shape), prompt_len=PROMPT_LEN, from_encoder=True)
  state = trainer.init_state()
  loss, grads = trainer.loss_and_grads(state, trainer.put_batch(random_batch(cfg, True)))
  np.testing.assert_allclose(float(loss), want_loss, atol=1e-5)
  assert_trees_close(jax.device_get(grads), want_grads)
  assert any(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(want_grads))


def test_2x2x2_mesh_with_grad_accumulation_equals_one_device(tiny_model):
  """data × fsdp × tensor, 2 micro-batches, vs one batch on one device. Dropout is off here: its
  masks are drawn per micro-batch (the diffusion masks are drawn for the whole batch first)."""
  cfg, model = tiny_model
  out = []
  model.set_attributes(rate=0.0)  # the Trainer keeps this in its graphdef; restored below
  try:
    for shape, accum in (((1, 1, 1), 1), ((2, 2, 2), 2)):
      devices = jax.devices()[:int(np.prod(shape))]
      trainer = Trainer(dataclasses.replace(cfg, grad_accum=accum), model,
                        sharding.make_mesh(shape, devices=devices), prompt_len=PROMPT_LEN,
                        from_encoder=True)
      state = trainer.init_state()
      loss, grads = trainer.loss_and_grads(state, trainer.put_batch(random_batch(cfg, True)))
      out.append((float(loss), jax.device_get(grads)))
  finally:
    model.set_attributes(rate=cfg.model.lm.lora.dropout)
  np.testing.assert_allclose(out[1][0], out[0][0], atol=1e-5)
  assert_trees_close(out[1][1], out[0][1])


def test_non_finite_step_is_not_applied(reference):
  trainer = reference[0]
  cfg = trainer.cfg
  state = trainer.init_state()
  state, m = trainer.train_step(state, trainer.put_batch(random_batch(cfg, True)))
  assert bool(m["finite"]) and int(state["updates"]) == 1 and float(m["tokens"]) > 0
  before = jax.device_get(state["params"])
  bad = random_batch(cfg, True, seed=1)
  bad["enc"][0, 0, 0] = np.inf
  state, m = trainer.train_step(state, trainer.put_batch(bad))
  assert not bool(m["finite"])
  assert int(state["step"]) == 2 and int(state["updates"]) == 1
  assert_trees_close(jax.device_get(state["params"]), before, atol=0)


def test_real_tokens_count_prompt_audio_windows_and_transcript():
  cfg = tiny()  # 100 encoder frames: 5 windows of 17 frames (2 × 160 samples each), 4 queries
  window = 17 * 2 * 160
  batch = {"audio_len": np.array([window, window + 1, cfg.data.samples, 0]),
           "response_len": np.array([3, 3, 16, 0]), "valid": np.array([True, True, True, False])}
  np.testing.assert_array_equal(real_tokens(cfg, PROMPT_LEN, batch),
                                [PROMPT_LEN + 4 + 3, PROMPT_LEN + 8 + 3, PROMPT_LEN + 20 + 16, 0])


def test_encoder_cache_computes_once_per_utterance(tmp_path):
  from llada_jax.train.batches import EncoderCache

  calls = []

  def encode(audio):
    calls.append(audio.shape)
    return np.repeat(audio[:, :3, None], 2, axis=2) + 1.0  # [B, 3, 2], row-dependent

  cache = EncoderCache(tmp_path, "fp", encode)
  audio = np.arange(12, dtype=np.float32).reshape(3, 4)
  batch = {"audio": audio, "ids": ["a", "b", ""], "valid": np.array([True, True, False])}
  first = cache(batch)
  assert "audio" not in first and first["enc"].shape == (3, 3, 2) and len(calls) == 1
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "fp").iterdir()) == ["a", "b"]
  second = cache(batch)
  assert len(calls) == 1 and cache.hits == 2
  np.testing.assert_array_equal(second["enc"][:2], first["enc"][:2])
  assert not second["enc"][2].any()  # padding rows are zeros
  # A corpus rebuilt in place: same ids, other audio → encoded afresh, never the stale rows.
  rebuilt = cache({**batch, "audio": audio + 100.0})
  assert len(calls) == 2 and cache.misses == 4
  np.testing.assert_array_equal(rebuilt["enc"][:2], first["enc"][:2] + 100.0)


def test_exported_run_evaluates_with_every_llada_strategy(straight_run, corpus, tmp_path):
  """train.py's DIR/model loads and eval.py decodes it: diffusion, semi-AR, deliberation over a
  first pass (random and low-confidence masking, text-only), with the run's mel frames."""
  from llada_jax.cli import eval as cli
  from llada_jax.models import checkpoint
  from llada_jax.models.whisper_llada import WhisperLLaDA

  model_dir = straight_run["workdir"] / "model"
  model = checkpoint.load(model_dir)
  assert isinstance(model, WhisperLLaDA)
  info = checkpoint.read_source_info(model_dir)
  assert info["format"] == "trained" and info["step"] in (2, 4) and info["mel_frames"] == 200
  common = ["--checkpoint", str(model_dir), "--data", corpus["dev"], "--batch-size", "4",
            "--quiet", "--gen-length", "8", "--steps", "8"]
  # The run's 200 mel frames hold 2 s: longer utterances are cut to them, as Diffusion-ASR cuts
  # to 30 s, and counted; --too-long error makes them error records instead.
  capped = tmp_path / "capped"
  assert cli.main([*common, "--strategy", "diffusion", "--out", str(capped)]) == 0
  summary = json.loads((capped / "summary.json").read_text())
  assert summary["num_utts"] == 4 and summary["truncated_utts"] == 4
  assert summary["num_errors"] == 0 and summary["audio_seconds"] == pytest.approx(4 * 2.0)
  strict = tmp_path / "strict"
  assert cli.main([*common, "--strategy", "diffusion", "--out", str(strict),
                   "--too-long", "error"]) == 0
  summary = json.loads((strict / "summary.json").read_text())
  assert summary["num_utts"] == 0 and summary["num_errors"] == 4
  assert summary["truncated_utts"] == 0
  common += ["--mel-frames", "2000"]  # 20 s: every dev utterance fits
  for name, extra in [("diffusion", []), ("semi_ar", ["--block-length", "4"]),
                      ("diffusion", ["--cache", "--threshold", "0.5"])]:
    out = tmp_path / f"{name}{len(extra)}"
    assert cli.main([*common, "--strategy", name, "--out", str(out), *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_utts"] == 4 and summary["strategy"] == name
  first = tmp_path / "diffusion0" / "hyps.jsonl"
  for extra in (["--masking", "random", "--deliberation-strategy", "diffusion"],
                ["--masking", "low_confidence", "--deliberation-strategy", "diffusion"],
                ["--deliberation-strategy", "semi_ar", "--num-chunks", "2"],
                ["--text-only"]):
    out = tmp_path / ("delib" + "_".join(extra))
    assert cli.main([*common, "--strategy", "deliberation", "--first-pass", str(first),
                            "--out", str(out), *extra]) == 0
    rows = [json.loads(ln) for ln in (out / "hyps.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("hyp" in r for r in rows)
  # a causal strategy on a LLaDA checkpoint is refused with a clear message
  assert cli.main([*common, "--strategy", "ar", "--out", str(tmp_path / "ar")]) == 2

  # The same through the Python API: llada_jax.open_transcriber on paths, with and without
  # first-pass hypotheses, gives eval.py's texts.
  import llada_jax

  by_id = {r["id"]: r for r in map(json.loads, (tmp_path / "diffusion0" / "hyps.jsonl")
                                   .read_text().splitlines())}
  paths = sorted(Path(corpus["dev"]).rglob("*.flac"))
  settings = llada_jax.LLaDASettings(
      decoding=llada_jax.DiffusionSettings(gen_length=8, steps=8, block_length=None),
      mel_frames=2000)
  t = llada_jax.open_transcriber(model_dir, settings, batch_size=4)
  texts = t(paths)
  assert texts == [by_id[p.stem]["hyp"] for p in paths]
  delib = llada_jax.open_transcriber(
      model_dir, dataclasses.replace(settings, decoding=llada_jax.DeliberationSettings(steps=8),
                                     text_only=True), batch_size=4)
  want = {r["id"]: r["hyp"] for r in map(json.loads, (tmp_path / "delib--text-only" /
                                                      "hyps.jsonl").read_text().splitlines())}
  assert delib(paths, hypotheses=texts) == [want[p.stem] for p in paths]
  with pytest.raises(ValueError, match="hypotheses"):
    delib(paths, hypotheses=texts[:1])
  # Their data file as --data, its origin_transcripts as the first pass (no --first-pass): the
  # same ids (file stems) and first pass give the same deliberation as above.
  data = tmp_path / "delib.json"
  data.write_text(json.dumps({"annotation": [
      {"path": str(p), "text": by_id[p.stem]["ref"], "origin_transcripts": t}
      for p, t in zip(paths, texts)]}))
  out = tmp_path / "delib_file"
  assert cli.main([*common, "--strategy", "deliberation", "--text-only", "--data", str(data),
                   "--out", str(out), "--predictions-json", str(tmp_path / "p.json")]) == 0
  assert {r["id"]: r["hyp"] for r in map(json.loads, (out / "hyps.jsonl").read_text()
                                         .splitlines())} == want
  assert [r["origin_transcripts"] for r in json.loads((tmp_path / "p.json").read_text())] == texts
