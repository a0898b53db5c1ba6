"""eval.py as 2 processes × 4 simulated CPU devices (gloo collectives, a coordinator on a free
local port): process 0 writes one hyps.jsonl identical to the 1-process run's, and a batch or mesh
that does not fit the processes exits 2 on both before compiling.

Each launch has a timeout; when one process fails the other is killed (it would wait for its peer
in a collective). Both processes share a persistent compilation cache (the session's).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import (
  BATCH,
  assert_same_hyps,
  eval_args,
  read_hyps,
  xla_flags,
)

from llada_jax.inference import transcriber as transcriber_lib

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 2
TIMEOUT = 300


@pytest.fixture(scope="module", autouse=True)
def _forget_compilations():
  yield
  transcriber_lib._EXECUTABLES.clear()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, eval_checkpoints, eval_run, xla_cache):
  return {"tmp": tmp_path_factory.mktemp("multiprocess"), **eval_checkpoints, "eval_run": eval_run,
          "cache": xla_cache}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(argv: list[str], cache: str, logs: Path) -> list[tuple[int, str]]:
  """eval.py in PROCESSES processes of 4 devices each → (exit status, stderr) per process."""
  port = _free_port()
  procs = []
  for i in range(PROCESSES):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8 // PROCESSES),
               JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(PROCESSES), JAX_PROCESS_ID=str(i),
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=str(ROOT))
    err = open(logs.with_name(f"{logs.name}.{i}.stderr"), "w+")
    procs.append((subprocess.Popen([sys.executable, str(ROOT / "eval.py"), *argv], env=env,
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err), err))
  deadline = time.monotonic() + TIMEOUT
  try:
    while any(p.poll() is None for p, _ in procs):
      failed = [p for p, _ in procs if p.poll() not in (None, 0, 2)]
      if failed or time.monotonic() > deadline:
        break  # a peer waits forever in a collective: stop the rest
      time.sleep(0.2)
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  out = []
  for p, err in procs:
    err.seek(0)
    out.append((p.returncode, err.read()))
    err.close()
  return out


@pytest.mark.parametrize("run, mesh", [("deliberation_semi_ar", "1,2,4"), ("whisper", None)])
def test_two_processes_write_the_one_process_hyps(setup, run, mesh):
  """Deliberation with fsdp weights split across the two processes (mesh 1,2,4), and Whisper on
  the default mesh (every device on the data axis: 8,1,1): the hyps.jsonl of one process on the
  same mesh of 8 devices (byte for byte for deliberation; Whisper's confidences to float rounding,
  see `assert_same_hyps`). 10 utterances in batches of 8: the second batch's 2 rows are both
  process 0's; process 1 runs that step on padding."""
  s = setup
  # (test_eval_mesh's run on that mesh: once per session, conftest's `eval_run`)
  reference = s["eval_run"](run, "--mesh", mesh or "8,1,1", "--batch-size", str(BATCH))
  out = s["tmp"] / f"{run}_two"
  argv = eval_args(s["models"], s["data"], s["first"], run, out, "--batch-size", str(BATCH),
                   *(["--mesh", mesh] if mesh else []))
  results = launch(argv, s["cache"], s["tmp"] / f"{run}_two")
  assert [rc for rc, _ in results] == [0, 0], [err[-3000:] for _, err in results]
  if run == "whisper":
    assert_same_hyps(read_hyps(out), read_hyps(reference))
  else:
    assert (out / "hyps.jsonl").read_text() == (reference / "hyps.jsonl").read_text()
  assert sorted(p.name for p in out.iterdir()) == ["hyps.jsonl", "summary.json"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["placement"]["processes"] == 2 and summary["placement"]["devices"] == 8
  assert summary["placement"]["mesh"] == [int(x) for x in (mesh or "8,1,1").split(",")]
  assert summary["num_utts"] == 10 and summary["num_errors"] == 0
  single = json.loads((reference / "summary.json").read_text())
  assert summary["wer"] == single["wer"] and summary["audio_seconds"] == single["audio_seconds"]
  assert len(read_hyps(out)) == 10


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "3"], "batch size 3 is not divisible by the 2 processes"),
    (["--batch-size", "8", "--mesh", "1,1,8"], "gives process 0 rows 0…7 (8) of a batch of 8"),
    (["--batch-size", "8", "--mesh", "4,1,1"], "needs 4 devices, have 8"),
])
def test_batch_or_mesh_that_does_not_fit_the_processes_exits_2(setup, extra, message):
  s = setup
  out = s["tmp"] / "bad"
  argv = eval_args(s["models"], s["data"], s["first"], "diffusion", out, *extra)
  results = launch(argv, s["cache"], s["tmp"] / "bad")
  for rc, err in results:
    assert rc == 2 and message in err, err[-2000:]
    assert "compiled" not in err
  assert not (out / "hyps.jsonl").exists()
