"""Multi-process training on one CPU: train.py as 2 processes × 4 devices (mesh 2×2×2) equals one
process × 8 devices; resume and export across processes; which rows each host loads; bad
distributed set-ups fail fast, naming what is wrong.

Every train.py is a subprocess with a timeout; when one process of a run fails, its peers get a
few seconds to end and are then killed, so a broken collective fails this module instead of
hanging it.

No persistent compilation cache here: on the CPU backend the cache key holds a per-process
topology fingerprint and only process 0 writes entries, so process 1 never hits while process 0
does. The cache would then only unbalance the processes, and gloo (CPU collectives) gives a
process 30 s to join a new communicator. Without it both compile every program at the same pace;
a 1-layer variant of the tiny model and the suite's cheapest CPU code generation (the same for
every run compared) keep those compiles short.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from support import xla_flags

from llada_jax.config_files import ConfigError
from llada_jax.data import pipeline
from llada_jax.parallel import sharding
from llada_jax.train import batches
from llada_jax.train import config as config_lib

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 240
PEER_GRACE_S = 15  # after one process of a run fails, the others get this long to end on their own


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir: Path, args: list[str], *, processes: int, env: dict | None = None,
           timeout: float = RUN_TIMEOUT_S) -> list[tuple[int, str]]:
  """train.py as `processes` processes over 8 CPU devices in all → [(exit code, stderr)] per
  process. When a process fails its peers get PEER_GRACE_S, then are killed; so is the whole run
  at `timeout`."""
  base = dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=xla_flags(8 // processes),
              PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
              **(env or {}))
  base.pop("JAX_COMPILATION_CACHE_DIR", None)
  if processes > 1:
    base.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                JAX_NUM_PROCESSES=str(processes))
  cmd = [sys.executable, str(ROOT / "train.py"), "--no-progress", "--workdir", str(workdir), *args]
  logs = [open(f"{workdir}.p{i}.stderr", "w+") for i in range(processes)]
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(base, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(processes)]
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):  # the peers may be stuck in a collective
        deadline = min(deadline, time.monotonic() + PEER_GRACE_S)
      if time.monotonic() > deadline:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  out = []
  for p, log in zip(procs, logs):
    log.seek(0)
    out.append((p.returncode, log.read()))
    log.close()
  return out


def ok(results: list[tuple[int, str]]) -> None:
  for i, (rc, err) in enumerate(results):
    assert rc == 0, f"process {i} exited {rc}:\n{err[-4000:]}"


def read_metrics(workdir: Path) -> list[dict]:
  return [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_args(corpus):
  """The tiny model with 1 layer per stack, 4 steps on mesh (2, 2, 2): a checkpoint at 2 and 4,
  validation (loss and WER of the 4 dev utterances) at 4."""
  return ["--config", "tiny", "--set", f"data.train={corpus['train']}",
          f"data.dev={corpus['dev']}", f"data.tokenizer={corpus['tokenizer']}", "mesh=2,2,2",
          "eval_every=4", "data.wer_examples=4", "model.whisper.encoder_layers=1",
          "model.qformer.num_layers=1", "model.lm.n_layers=1"]


def test_two_processes_train_resume_and_export_as_one(tiny_args, tmp_path):
  """1 process × 8 devices, 4 steps, vs 2 processes × 4 devices: 2 steps (no validation), then
  --resume to 4 (the LR schedule's first 2 steps are warm-up either way), then the export."""
  one = tmp_path / "one"
  ok(launch(one, tiny_args, processes=1))
  two = tmp_path / "two"
  first = launch(two, [*tiny_args, "steps=2", "eval_every=0", "--no-export"], processes=2)
  ok(first)
  assert "this host loads rows 0-3" in first[0][1] and "this host loads rows 4-7" in first[1][1]
  ok(launch(two, [*tiny_args, "--resume"], processes=2))

  want, got = read_metrics(one), read_metrics(two)
  assert [r["step"] for r in got] == [1, 2, 3, 4]  # written once, by process 0
  for a, b in zip(got, want):
    for k in ("loss", "grad_norm", "lr", "val_loss"):
      np.testing.assert_allclose(a.get(k, np.nan), b.get(k, np.nan), atol=1e-5, err_msg=f"{k} {a}")
  assert [r.get("dev_wer") for r in got] == [r.get("dev_wer") for r in want]
  assert "dev_wer" in got[3] and "val_loss" in got[3]
  log = (two / "train.log").read_text()
  assert "resumed from step 2" in log and "(2 hosts)" in log
  assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2", "4"]

  import llada_jax
  from llada_jax.models import checkpoint

  assert checkpoint.read_source_info(two / "model")["step"] == 4
  got_model, want_model = llada_jax.load(two / "model"), llada_jax.load(one / "model")
  from flax import nnx

  want_flat = dict(nnx.to_flat_state(nnx.state(want_model, nnx.Param)))
  got_flat = dict(nnx.to_flat_state(nnx.state(got_model, nnx.Param)))
  assert got_flat.keys() == want_flat.keys()
  for path, var in got_flat.items():
    np.testing.assert_allclose(np.asarray(var[...]), np.asarray(want_flat[path][...]), atol=1e-5,
                               err_msg=str(path))


@pytest.mark.parametrize("change, message", [
    ("batch_size=6", "6 rows per micro-batch is not divisible by the 4 data-parallel shards of "
                     "mesh (2, 2, 2) (8 devices over 2 processes)"),
    ("mesh=3,-1,1", "does not divide 8 devices over 2 processes"),
])
def test_bad_config_exits_2_on_every_process_before_compiling(tiny_args, tmp_path, change, message):
  results = launch(tmp_path / "run", [*tiny_args, change], processes=2, timeout=120)
  for rc, err in results:
    assert rc == 2 and message in err, err[-3000:]
    assert "compiled" not in err


def test_a_missing_coordinator_or_peer_times_out_naming_the_address(tmp_path):
  """Process 1 finds nobody at the coordinator's address; process 0 of another run waits for a
  process 1 that never comes. Both end within seconds of LLADA_DISTRIBUTED_TIMEOUT, saying why."""
  dead, lonely = (f"127.0.0.1:{free_port()}" for _ in range(2))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2", LLADA_DISTRIBUTED_TIMEOUT="2",
             PYTHONPATH=str(ROOT))
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", "tiny", "--workdir"]
  t0 = time.monotonic()
  procs = [subprocess.Popen([*cmd, str(tmp_path / name)], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env=dict(env, JAX_COORDINATOR_ADDRESS=address,
                                                JAX_PROCESS_ID=index))
           for name, address, index in (("dead", dead, "1"), ("lonely", lonely, "0"))]
  (rc1, err1), (rc0, err0) = ((p.wait(timeout=60), p.stderr.read()) for p in procs)
  assert time.monotonic() - t0 < 40
  assert rc1 == 2 and f"cannot reach the JAX coordinator at {dead}" in err1, err1[-3000:]
  assert "within 2 s" in err1
  assert rc0 != 0, err0[-3000:]  # JAX aborts; its message names neither the address nor the cause
  assert (f"process 0 of 2: the JAX coordinator at {lonely} did not see all 2 processes within "
          f"2 s") in err0


# ---------------------------------------------------------------------------------------------
# Which rows each host loads, with hosts simulated over the 8 local devices (4 per "process").

def fake_process(device) -> int:
  return jax.devices().index(device) // 4


def mesh_of(order, shape) -> Mesh:
  devices = np.asarray(jax.devices(), dtype=object)[list(order)].reshape(shape)
  return Mesh(devices, sharding.MESH_AXES)


def rows_by_process(mesh, batch=8):
  sh = sharding.batch_sharding(mesh, sharding.ShardingConfig.full_fsdp(), (batch,))
  return [sharding.process_rows(sh, batch, p, fake_process).tolist() for p in (0, 1)]


def test_rows_follow_the_batch_sharding_not_the_process_count():
  # data × fsdp split over the hosts: each loads its own half
  assert rows_by_process(mesh_of(range(8), (2, 2, 2))) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  # the tensor axis spans the hosts (pairs of devices 0+4, 1+5, …): both hold, and load, all rows
  across = mesh_of([0, 4, 1, 5, 2, 6, 3, 7], (1, 4, 2))
  assert rows_by_process(across) == [list(range(8))] * 2
  # batch replicated everywhere (mesh 1×1×8): every host loads the whole batch
  assert rows_by_process(mesh_of(range(8), (1, 1, 8))) == [list(range(8))] * 2
  # data shards alternating between hosts: rows 0, 2, 4, 6 on one, the odd rows on the other
  assert rows_by_process(mesh_of([0, 4, 1, 5, 2, 6, 3, 7], (8, 1, 1))) == [[0, 2, 4, 6],
                                                                           [1, 3, 5, 7]]
  # what make_array_from_process_local_data expects: for this process (all 8 devices), every row
  sh = sharding.batch_sharding(mesh_of(range(8), (2, 2, 2)), sharding.ShardingConfig.full_fsdp(),
                               (8,))
  assert sharding.process_rows(sh, 8).tolist() == list(range(8))


def test_pad_groups_must_not_straddle_hosts():
  rules = sharding.ShardingConfig.full_fsdp()
  cfg = config_lib.load("tiny", ["data.pad_group=2"])
  interleaved = mesh_of([0, 4, 1, 5, 2, 6, 3, 7], (8, 1, 1))
  with pytest.raises(ConfigError, match=r"data.pad_group=2: process 0 of 2 loads rows 0, 2, 4, 6"):
    batches.host_rows(cfg, interleaved, rules, 0, fake_process)
  halves = mesh_of(range(8), (2, 2, 2))
  assert batches.host_rows(cfg, halves, rules, 1, fake_process).tolist() == [4, 5, 6, 7]
  big = config_lib.load("tiny", ["data.pad_group=8"])
  with pytest.raises(ConfigError, match="loads rows 0-3 of the 8-row batch"):
    batches.host_rows(big, halves, rules, 0, fake_process)
  # "appended" EOS pads no groups: any rows do
  appended = config_lib.load("tiny", ["data.pad_group=8", "data.response_eos=appended"])
  assert batches.host_rows(appended, interleaved, rules, 1, fake_process).tolist() == [1, 3, 5, 7]


def test_pipeline_loads_the_rows_it_is_given():
  """Hosts given interleaved rows split every global batch between them; hosts given the same rows
  load the same utterances; both agree with the one-host batch row for row."""
  audio = [np.full((800 + 10 * i,), i, np.float32) for i in range(11)]
  config = pipeline.PipelineConfig(batch_size=4, buckets=(2000,), seed=3, num_threads=1)
  whole = list(pipeline.AudioBatches(pipeline.ArraySource(audio), config, 0, 1))
  half = pipeline.PipelineConfig(batch_size=2, buckets=(2000,), seed=3, num_threads=1)
  odd, even = (list(pipeline.AudioBatches(pipeline.ArraySource(audio), half, rows=r,
                                          global_batch=4)) for r in ([1, 3], [0, 2]))
  again = list(pipeline.AudioBatches(pipeline.ArraySource(audio), config, rows=[0, 1, 2, 3],
                                     global_batch=4))
  assert len(whole) == len(odd) == len(even) == len(again) == 3
  for w, o, e, a in zip(whole, odd, even, again):
    assert o["ids"] == [w["ids"][1], w["ids"][3]] and e["ids"] == [w["ids"][0], w["ids"][2]]
    np.testing.assert_array_equal(o["audio"], w["audio"][[1, 3]])
    assert a["ids"] == w["ids"]
  with pytest.raises(ValueError, match="global_batch"):
    pipeline.AudioBatches(pipeline.ArraySource(audio), half, rows=[0, 1])
  with pytest.raises(ValueError, match=r"rows \[0, 4\]"):
    pipeline.AudioBatches(pipeline.ArraySource(audio), half, rows=[0, 4], global_batch=4)
