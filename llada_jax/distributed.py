"""Several processes, one program: start-up and the little each process must agree on.

Every process (one per host, or several on one CPU machine) runs the same command. With
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or LLADA_DISTRIBUTED=1 where
JAX can detect the cluster itself (Cloud TPU pod slices, SLURM, Open MPI), `init_distributed` runs
`jax.distributed.initialize()` before anything touches a device. On CPU, cross-process collectives
go through gloo.

`allgather` hands every process each process's (JSON-able) object; `agree_max` the largest of an
integer each process holds — what a shape decided from this process's rows needs before a compiled
step that all processes run together.
"""

from __future__ import annotations

import json
import os
import typing as tp

import numpy as np


def init_distributed() -> None:
  """jax.distributed.initialize() when the environment says this is one process of several."""
  import jax

  addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
  auto = os.environ.get("LLADA_DISTRIBUTED", "") not in ("", "0")
  if not addr and not auto:
    return
  # CPU devices of different processes talk through gloo (no effect on GPU/TPU collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if addr:
    jax.distributed.initialize(coordinator_address=addr,
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()  # cluster auto-detection (TPU pod, SLURM, MPI)


def allgather(obj: tp.Any) -> list[tp.Any]:
  """Every process's `obj` (JSON-able), in process order, on every process."""
  import jax

  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.shape[0]], np.int64)))
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:data.shape[0]] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(row[:int(n)].tobytes().decode()) for row, n in zip(rows, sizes.reshape(-1))]


def agree_max(value: int) -> int:
  """The largest `value` over all processes (`value` itself in a single process)."""
  return max(int(v) for v in allgather(int(value)))
