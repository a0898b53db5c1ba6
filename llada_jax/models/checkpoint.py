"""Converted-model checkpoints: a folder with our config, orbax weight parts and the tokenizer.

    OUT/config.json      the model config (`to_dict`), tagged with its kind
    OUT/source.json      where the weights came from (format, source config) — used by export
    OUT/params/part-NNNNN  orbax checkpoints of {parameter path: array}, each at most `part_bytes`
    OUT/source_extra.safetensors  (converted Diffusion-ASR .pth only) the file's tensors that the
                         model does not use, kept so that export writes the file back whole
    OUT/tokenizer*.json …  the tokenizer files

Weights are written in parts so that converting an 8B model never holds more than one part (plus one
source shard) in memory. Everything is written to a temp folder beside OUT and renamed into place
only when complete, so a crash or a bad checkpoint never leaves a half-written OUT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import typing as tp
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llada_jax.models import stacked
from llada_jax.models.config import (
  LMConfig,
  WhisperConfig,
  WhisperLLaDAConfig,
  load_json,
  save_json,
)
from llada_jax.parallel import sharding

log = logging.getLogger(__name__)

PART_BYTES = 512 << 20
# Variables that are never in a checkpoint: dropout RNG streams are created fresh on load.
RNG_STATE = nnx.Any(nnx.RngKey, nnx.RngCount)


class CheckpointError(ValueError):
  """A converted checkpoint folder is missing, incomplete or does not fit its config."""


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False):
  """Yield a temp folder beside `out`; on success it replaces `out`, on failure it is removed."""
  out = Path(out).expanduser().absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    yield tmp
    if out.exists():
      old = out.parent / f".{out.name}.old-{os.getpid()}"
      out.rename(old)
      tmp.rename(out)
      shutil.rmtree(old)
    else:
      tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


class PartWriter:
  """Collects (name, array) pairs and flushes them as orbax parts of at most `part_bytes`."""

  def __init__(self, folder: Path, part_bytes: int = PART_BYTES):
    self.folder, self.part_bytes = folder, part_bytes
    self.folder.mkdir(parents=True, exist_ok=True)
    self.pending: dict[str, np.ndarray] = {}
    self.pending_bytes = 0
    self.parts = 0
    self.index: dict[str, dict] = {}
    # One process writes (host numpy arrays): on several, orbax must not wait for the others.
    me = jax.process_index()
    self.checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me,
                                                                   active_processes={me}))

  def add(self, name: str, array: np.ndarray) -> None:
    if name in self.index:
      raise CheckpointError(f"parameter {name!r} written twice")
    self.pending[name] = array
    self.pending_bytes += array.nbytes
    self.index[name] = {"part": self.parts, "shape": list(array.shape), "dtype": str(array.dtype)}
    if self.pending_bytes >= self.part_bytes:
      self.flush()

  def flush(self) -> None:
    if not self.pending:
      return
    self.checkpointer.save(self.folder / f"part-{self.parts:05d}", self.pending)
    self.checkpointer.wait_until_finished()
    self.pending, self.pending_bytes = {}, 0
    self.parts += 1

  def close(self) -> None:
    self.flush()
    with open(self.folder / "index.json", "w") as f:
      json.dump({"parts": self.parts, "params": self.index}, f)


def save(out: str | Path, config, items: tp.Iterable[tuple[str, np.ndarray]], *,
         source_info: dict | None = None, tokenizer: tp.Callable[[Path], tp.Any] | None = None,
         part_bytes: int = PART_BYTES, overwrite: bool = False) -> Path:
  """Write a converted checkpoint atomically. `items` may be a generator (streamed)."""
  with atomic_dir(out, overwrite=overwrite) as tmp:
    save_json(config, tmp / "config.json")
    with open(tmp / "source.json", "w") as f:
      json.dump(source_info or {}, f, indent=2)
    writer = PartWriter(tmp / "params", part_bytes)
    for name, array in items:
      writer.add(name, array)
    writer.close()
    if tokenizer is not None:
      tokenizer(tmp)
  return Path(out)


def _read_json(file: Path) -> tp.Any:
  try:
    return json.loads(file.read_text(encoding="utf-8"))
  except (OSError, ValueError, RecursionError) as e:
    # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
    raise CheckpointError(f"{file}: unreadable JSON: {e}") from None


def read_index(path: str | Path) -> dict:
  """params/index.json, checked: {"parts": N, "params": {name: {"part": 0..N-1, "shape": [dims],
  "dtype": str}}}."""
  index = Path(path) / "params" / "index.json"
  if not index.is_file():
    raise CheckpointError(f"{path}: not a converted llada-jax checkpoint (no params/index.json)")
  data = _read_json(index)
  parts = data.get("parts") if isinstance(data, dict) else None
  params = data.get("params") if isinstance(data, dict) else None
  if not _count(parts) or not isinstance(params, dict):
    raise CheckpointError(f"{index}: expected {{\"parts\": N, \"params\": {{name: {{\"part\", "
                          f"\"shape\", \"dtype\"}}}}}}, got {json.dumps(data)[:80]}")
  for name, meta in params.items():
    if not (isinstance(meta, dict) and _count(meta.get("part")) and meta["part"] < parts
            and isinstance(meta.get("shape"), list) and all(map(_count, meta["shape"]))
            and isinstance(meta.get("dtype"), str)):
      raise CheckpointError(f"{index}: parameter {name!r}: expected {{\"part\": 0..{parts - 1}, "
                            f"\"shape\": [dims], \"dtype\": …}}, got {json.dumps(meta)[:80]}")
  for part in sorted({meta["part"] for meta in params.values()}):
    if not (index.parent / f"part-{part:05d}").is_dir():  # else orbax's FileNotFoundError
      raise CheckpointError(f"{path}: incomplete checkpoint: params/index.json places parameters "
                            f"in part {part}, but params/part-{part:05d} is missing")
  return data


def _count(value) -> bool:
  """Whether `value` is a JSON int >= 0 (not a bool)."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_config(path: str | Path):
  file = Path(path) / "config.json"
  if not file.is_file():
    raise CheckpointError(f"{path}: no config.json")
  return load_json(file)


def read_source_info(path: str | Path) -> dict:
  file = Path(path) / "source.json"
  if not file.is_file():
    return {}
  info = _read_json(file)
  if not isinstance(info, dict):
    raise CheckpointError(f"{file}: expected a JSON object, got {type(info).__name__}")
  return info


def iter_params(path: str | Path, targets: dict[str, tp.Any] | None = None, *,
                keep: tp.Callable[[str], bool] | None = None) -> tp.Iterator[tuple[str, tp.Any]]:
  """(name, array) for every stored parameter, one part in memory at a time.

  With `targets` ({name: ShapeDtypeStruct with sharding}), arrays are restored straight into their
  shardings (each host reads only its shards). With `keep`, only the names it accepts come back,
  and parts holding none of them are not read.
  """
  index = read_index(path)
  checkpointer = ocp.StandardCheckpointer()
  for part in range(index["parts"]):
    folder = Path(path).absolute() / "params" / f"part-{part:05d}"
    names = [n for n, meta in index["params"].items() if meta["part"] == part]
    if keep is not None and not any(keep(n) for n in names):
      continue
    if targets is None:
      restored = checkpointer.restore(folder)
    else:
      restored = checkpointer.restore(folder, {n: targets[n] for n in names if n in targets})
    yield from (item for item in restored.items() if keep is None or keep(item[0]))


def _fresh_rng(variable: nnx.Variable) -> jax.Array:
  """A dropout stream's key (or count) as a freshly built model has it, for any stack shape."""
  if isinstance(variable, nnx.RngKey):
    return jnp.broadcast_to(jax.random.key(0), variable.shape)
  return jnp.zeros(variable.shape, variable.dtype)


def model_class(config):
  from llada_jax.models.transformer import Transformer
  from llada_jax.models.whisper import Whisper
  from llada_jax.models.whisper_llada import WhisperLLaDA

  return {WhisperConfig: Whisper, LMConfig: Transformer,
          WhisperLLaDAConfig: WhisperLLaDA}[type(config)]


@functools.lru_cache(maxsize=8)
def _abstract_split(config) -> tuple[nnx.GraphDef, nnx.State]:
  cls = model_class(config)
  return nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))


def abstract_model(config) -> nnx.Module:
  """The model of `config` with shapes for values (nothing allocated), its own variables each
  call. Tracing the initialisers is most of a small model's load time (each random-stream step
  sets a variable to a tracer, and flax asks that tracer for its sharding, which walks the whole
  trace so far), so it happens once per config in a process."""
  graphdef, state = _abstract_split(config)
  return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))


def _with_everywhere(config, field: str, value):
  """`config` with `field` set to `value` in it and in every nested config that has one."""
  changes = {f.name: _with_everywhere(getattr(config, f.name), field, value)
             for f in dataclasses.fields(config)
             if dataclasses.is_dataclass(getattr(config, f.name))}
  if any(f.name == field for f in dataclasses.fields(config)):
    changes[field] = value
  return dataclasses.replace(config, **changes)


def with_compute_dtype(config, dtype: str):
  """`config` with every (sub-)config's compute `dtype` set to `dtype`; parameters keep their
  `param_dtype` (each matmul casts its weights to the compute dtype)."""
  return _with_everywhere(config, "dtype", dtype)


def with_attention(config, attention: str):
  """`config` with every (sub-)config's `attention` kernel (ATTENTION) set to
  `attention`: a runtime choice, like the compute dtype, not a property of the weights."""
  return _with_everywhere(config, "attention", attention)


def load(path: str | Path, *, mesh: jax.sharding.Mesh | None = None,
         rules: sharding.ShardingConfig | None = None, dtype: str | None = None,
         attention: str | None = None) -> nnx.Module:
  """The NNX model of a converted checkpoint, optionally placed on `mesh` by `rules`; `dtype`
  overrides the compute dtype of its config (e.g. "bfloat16" on accelerators), `attention` its
  attention kernel (ATTENTION, e.g. "cudnn" on a GPU)."""
  path = Path(path)
  config = read_config(path)
  if dtype is not None:
    config = with_compute_dtype(config, str(jnp.dtype(dtype)))
  if attention is not None:
    config = with_attention(config, attention)
  graphdef, state = nnx.split(abstract_model(config))
  flat = dict(nnx.to_flat_state(state))
  # On disk a stacked layer weight is one entry per layer (stacked.per_layer_names).
  names = {n: at for n, at in stacked.per_layer_names(state).items()
           if not RNG_STATE(at[0], flat[at[0]])}
  shape_of = lambda n: stacked.layer_shape(flat[names[n][0]])  # noqa: E731
  targets = None
  if mesh is not None:
    shardings = dict(nnx.to_flat_state(sharding.state_shardings(
        state, mesh, rules or sharding.ShardingConfig.full_fsdp())))
    layer_sharding = lambda key, i: (  # noqa: E731
        shardings[key].get_value() if i is None else NamedSharding(
            mesh, PartitionSpec(*tuple(shardings[key].get_value().spec)[1:])))
    targets = {n: jax.ShapeDtypeStruct(shape_of(n), flat[key].dtype,
                                       sharding=layer_sharding(key, i))
               for n, (key, i) in names.items()}
  stored = read_index(path)["params"]
  missing = sorted(set(names) - set(stored))
  unexpected = sorted(set(stored) - set(names))
  wrong = [f"{n}: stored {tuple(stored[n]['shape'])}, model {shape_of(n)}"
           for n in names if n in stored and tuple(stored[n]["shape"]) != shape_of(n)]
  if missing or unexpected or wrong:
    raise CheckpointError(f"{path}: checkpoint does not fit its config: missing {missing}, "
                          f"unexpected {unexpected}, shape mismatches {wrong}")
  place = None if mesh is None else (  # a stacked weight is put on its sharding once stacked
      lambda key, value: jax.device_put(value, shardings[key].get_value()))
  stacked.assign(state, iter_params(path, targets), place or (lambda key, value: value))
  for key, variable in flat.items():
    if RNG_STATE(key, variable):  # fresh dropout streams, as after `Module(rngs=nnx.Rngs(0))`
      variable.set_value(_fresh_rng(variable))
  return nnx.merge(graphdef, state)
