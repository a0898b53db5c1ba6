"""Multi-process runs: start-up from the environment, and global arrays brought to every host.

Every host runs the same command. `initialize_from_env()` calls `jax.distributed.initialize()` when

  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID   are set (explicit), or
  LLADA_DISTRIBUTED=1   (JAX detects the cluster: Cloud TPU pod slices, SLURM, Open MPI),

and waits at most LLADA_DISTRIBUTED_TIMEOUT seconds (default 300) for the other processes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import typing as tp

import numpy as np

log = logging.getLogger(__name__)

TIMEOUT_ENV = "LLADA_DISTRIBUTED_TIMEOUT"
_PROGRAM = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "llada_jax"
DEFAULT_TIMEOUT_S = 300


class DistributedError(RuntimeError):
  """The environment asks for a multi-process run that cannot start (bad variables, no
  coordinator)."""


def _int_env(environ: tp.Mapping[str, str], name: str, default: int | None = None) -> int:
  value = environ.get(name)
  if value is None or value == "":
    if default is None:
      raise DistributedError(f"JAX_COORDINATOR_ADDRESS is set but {name} is not: set "
                             f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                             f"together (or LLADA_DISTRIBUTED=1 to let JAX detect the cluster)")
    return default
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f"{name}={value!r}: expected an integer") from None


def _host_port(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise DistributedError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Until the coordinator's port accepts a connection; a DistributedError naming `address` after
  `timeout_s`. (JAX's own wait ends in a C++ abort that names neither the address nor the cause.)"""
  host, port = _host_port(address)
  deadline = time.monotonic() + timeout_s
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 2.0), 0.1)):
        return
    except OSError as e:
      if time.monotonic() + 0.25 >= deadline:
        raise DistributedError(
            f"cannot reach the JAX coordinator at {address} (JAX_COORDINATOR_ADDRESS) within "
            f"{timeout_s:g} s ({TIMEOUT_ENV}): {e.strerror or e}. Is process 0 running there, "
            f"and the port open to this host?") from None
    time.sleep(0.25)


def initialize_from_env(environ: tp.Mapping[str, str] | None = None) -> bool:
  """`jax.distributed.initialize()` when the environment says this is one process of several;
  True if it ran. Must come before anything touches a JAX backend."""
  environ = os.environ if environ is None else environ
  address = environ.get("JAX_COORDINATOR_ADDRESS") or None
  auto = environ.get("LLADA_DISTRIBUTED", "") not in ("", "0")
  if address is None and not auto:
    return False
  timeout = _int_env(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
  if timeout <= 0:
    raise DistributedError(f"{TIMEOUT_ENV}={timeout}: expected seconds > 0")
  import jax

  # Cross-process collectives of the CPU backend (jax 0.10's default; set so that no JAX version
  # starts a CPU run without them). Accelerator backends bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address is not None and not (auto and "JAX_PROCESS_ID" not in environ):
    count = _int_env(environ, "JAX_NUM_PROCESSES")
    index = _int_env(environ, "JAX_PROCESS_ID")
    if count < 1 or not 0 <= index < count:
      raise DistributedError(f"JAX_PROCESS_ID={index}, JAX_NUM_PROCESSES={count}: expected "
                             f"0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES")
    if index == 0:
      _host_port(address)
      log.info("process 0 of %d: serving the JAX coordinator on %s; waiting up to %d s for the "
               "others", count, address, timeout)
    else:
      log.info("process %d of %d: connecting to the JAX coordinator at %s (up to %d s)", index,
               count, address, timeout)
      wait_for_coordinator(address, timeout)
    # JAX ends a timed-out start-up with a C++ abort that names neither the address nor who is
    # missing: say it first.
    note = threading.Timer(timeout, lambda: print(
        f"{_PROGRAM}: process {index} of {count}: the JAX coordinator at {address} did not see all "
        f"{count} processes within {timeout} s ({TIMEOUT_ENV}); JAX will abort. Did every process "
        f"start, with JAX_NUM_PROCESSES={count} and its own JAX_PROCESS_ID?",
        file=sys.stderr, flush=True))
    note.daemon = True
    note.start()
    try:
      jax.distributed.initialize(coordinator_address=address, num_processes=count,
                                 process_id=index, initialization_timeout=timeout)
    finally:
      note.cancel()
  else:
    try:
      jax.distributed.initialize(coordinator_address=address, initialization_timeout=timeout)
    except ValueError as e:  # nothing detected
      raise DistributedError(f"LLADA_DISTRIBUTED=1: JAX could not detect the cluster ({e}); set "
                             f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                             f"instead") from None
  log.info("process %d of %d: %d of %d devices are local", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _spans_processes(x) -> bool:
  import jax

  return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def to_host(x) -> np.ndarray:
  """A (global) jax.Array as a whole numpy array on this host. When `x` is sharded over devices of
  other processes this is a collective: every process must call it, in the same order."""
  import jax

  if _spans_processes(x):
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def to_host_all(named: tp.Iterable[tuple[str, tp.Any]], chunk_bytes: int = 256 << 20
                ) -> tp.Iterator[tuple[str, np.ndarray]]:
  """(name, array) pairs → (name, numpy array), as `to_host` does but gathering up to
  `chunk_bytes` of arrays per compiled program rather than one program per array (a model's
  weights have many shapes). A collective on several processes: all of them iterate it."""
  chunk: list[tuple[str, tp.Any]] = []
  size = 0
  for name, x in named:
    chunk.append((name, x))
    size += x.nbytes if _spans_processes(x) else 0
    if size >= chunk_bytes:
      yield from _gather(chunk)
      chunk, size = [], 0
  yield from _gather(chunk)


def _gather(chunk: list[tuple[str, tp.Any]]) -> tp.Iterator[tuple[str, np.ndarray]]:
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  spread = [x for _, x in chunk if _spans_processes(x)]
  meshes = {x.sharding.mesh for x in spread if isinstance(x.sharding, NamedSharding)}
  gathered = {}
  if spread and len(meshes) == 1 and all(isinstance(x.sharding, NamedSharding) for x in spread):
    whole = NamedSharding(meshes.pop(), PartitionSpec())  # every device gets every array
    out = jax.jit(lambda xs: xs, out_shardings=whole)(spread)
    gathered = {id(x): np.asarray(y.addressable_data(0)) for x, y in zip(spread, out)}
  for name, x in chunk:
    yield name, gathered[id(x)] if id(x) in gathered else to_host(x)


_BARRIERS = [0]


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Every process waits here for the others, at most `timeout_s` (a no-op on one process).

  The coordination service's barrier, not a device collective: CPU collectives (gloo) give a
  process only 30 s to join a new communicator, less than one process may spend compiling or
  writing while the others wait."""
  import jax

  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost

  _BARRIERS[0] += 1  # a barrier name is used once
  multihost.get_barrier_sync_fn()(key=f"llada-{name}-{_BARRIERS[0]}", timeout_ms=timeout_s * 1000)


def allgather(obj: tp.Any) -> list[tp.Any]:
  """Every process's `obj` (JSON-able), in process order, on every process. A collective."""
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
  """The largest `value` over all processes (`value` itself in a single process): what a shape
  decided from this process's rows needs before a compiled step all processes run together."""
  return max(int(v) for v in allgather(int(value)))
