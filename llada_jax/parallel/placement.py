"""Where a transcriber runs: a device mesh over every process, the rules that place weights and
batches on it, and the moves between this process's rows and global arrays.

    p = Placement.create((2, 2, 2))          # (data, fsdp, tensor); one entry may be -1
    model = load_model("ckpt", p)            # weights placed by the training rules, LoRA merged

Weights are placed by their logical axes under a training sharding preset, by name
(`sharding.PRESETS`, all weights as the frozen collection): `full_fsdp` (model dim over fsdp,
heads / MLP / vocabulary over tensor), `lora_dp` (whole on every data-parallel device, split over
tensor only: no weight gathers while decoding, if the model / tensor fits a device) or
`replicated`. A global
batch of B rows is split over the data-parallel axes (the rules' `batch` axes: data × fsdp), B /
ways rows per shard; the tensor axis splits each row's work. With P processes each process feeds
its own B / P rows (`jax.make_array_from_process_local_data`) and reads back the same rows of each
output, so the mesh must give every process its own block of the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing as tp

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llada_jax.models import checkpoint as ckpt
from llada_jax.parallel import sharding
from llada_jax.parallel.sharding import ShardingConfig

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


class PlacementError(ValueError):
  """A mesh that does not fit the devices, or a batch that does not fit the mesh / processes."""


@dataclasses.dataclass(frozen=True)
class Placement:
  mesh: Mesh
  rules: ShardingConfig

  @classmethod
  def create(cls, shape: tp.Sequence[int] | Mesh | None = None,
             rules: str | ShardingConfig = "full_fsdp") -> Placement:
    """A (data, fsdp, tensor) mesh. Default: one device in a single process; with several
    processes every device on the data axis (a one-device mesh would leave the others idle). A
    single process may use fewer devices than it has (the first ones); several processes use all
    of theirs. A PlacementError names the numbers when the shape does not fit."""
    if isinstance(rules, str):
      try:
        rules = sharding.preset(rules)
      except ValueError as e:
        raise PlacementError(str(e)) from None
    if isinstance(shape, Mesh):
      return cls(shape, rules)
    if shape is None:
      shape = (1, 1, 1) if jax.process_count() == 1 else (-1, 1, 1)
    shape = tuple(int(s) for s in shape)
    devices = jax.devices()
    if len(shape) != 3:
      raise PlacementError(f"mesh {shape}: expected three sizes (data, fsdp, tensor)")
    if -1 not in shape and 0 < math.prod(shape) < len(devices) and jax.process_count() == 1:
      devices = devices[:math.prod(shape)]
    try:
      mesh = sharding.make_mesh(shape, devices=devices)
    except ValueError as e:
      where = (f" ({jax.process_count()} processes × {jax.local_device_count()})"
               if jax.process_count() > 1 else "")
      raise PlacementError(f"mesh {','.join(map(str, shape))}: {e}{where}") from None
    return cls(mesh, rules)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.mesh.shape[a] for a in self.mesh.axis_names)

  @property
  def ways(self) -> int:
    """Data-parallel shards of the batch."""
    return sharding.batch_ways(self.mesh, self.rules)

  @property
  def process_count(self) -> int:
    return jax.process_count()

  def global_batch(self, batch_size: int | None = None, per_device: int | None = None) -> int:
    """Rows per step over all devices and processes: `batch_size`, or `per_device` × the
    data-parallel ways; a PlacementError unless every shard and every process gets whole rows and
    each process its own block of them."""
    if per_device is not None:
      if per_device < 1:
        raise PlacementError(f"per_device_batch {per_device}: expected ≥ 1")
      batch_size = per_device * self.ways
    if batch_size is None or batch_size < 1:
      raise PlacementError(f"batch size {batch_size}: expected ≥ 1")
    mesh = ",".join(map(str, self.shape))
    if batch_size % self.process_count:
      raise PlacementError(f"batch size {batch_size} is not divisible by the {self.process_count} "
                           f"processes (each feeds batch / processes rows)")
    if batch_size % self.ways:
      raise PlacementError(f"batch size {batch_size} is not divisible by the {self.ways} "
                           f"data-parallel shards (data × fsdp) of mesh {mesh}")
    if self.process_count > 1:
      self._check_process_rows(batch_size, mesh)
    return batch_size

  def _check_process_rows(self, batch_size: int, mesh: str) -> None:
    rows: dict[int, set[int]] = {}
    for device, index in self.batch_sharding(1).devices_indices_map((batch_size,)).items():
      start, stop, _ = index[0].indices(batch_size)
      rows.setdefault(device.process_index, set()).update(range(start, stop))
    share = batch_size // self.process_count
    for p, held in sorted(rows.items()):
      if len(held) != share or max(held) - min(held) + 1 != share:
        raise PlacementError(
            f"mesh {mesh} gives process {p} rows {min(held)}…{max(held)} ({len(held)}) of a batch "
            f"of {batch_size}, but each of the {self.process_count} processes feeds its own block "
            f"of {share}: split the batch at least {self.process_count} ways over data × fsdp")

  def local_batch(self, batch_size: int) -> int:
    """This process's rows of a global batch."""
    return batch_size // self.process_count

  # -- arrays ------------------------------------------------------------------------------------

  def batch_sharding(self, ndim: int) -> NamedSharding:
    spec = self.rules.mesh_axes(("batch",) + (None,) * (ndim - 1))
    return NamedSharding(self.mesh, spec)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def abstract(self, local: np.ndarray) -> jax.ShapeDtypeStruct:
    """The global array that `put(local)` makes, as a shape with its sharding."""
    shape = (local.shape[0] * self.process_count, *local.shape[1:])
    return jax.ShapeDtypeStruct(shape, local.dtype, sharding=self.batch_sharding(local.ndim))

  def put(self, local: np.ndarray) -> jax.Array:
    """This process's rows → a global array split over the batch axes."""
    return sharding.put_rows(local, self.abstract(local))

  def local(self, x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array (the inverse of `put`)."""
    blocks = {}
    for shard in x.addressable_shards:  # replicas over the other axes hold the same rows
      blocks.setdefault(shard.index[0].indices(x.shape[0])[0], shard)
    return np.concatenate([np.asarray(blocks[k].data) for k in sorted(blocks)])

  def info(self) -> dict:
    return {"mesh": list(self.shape), "rules": sharding.preset_name(self.rules),
            "devices": int(self.mesh.size), "processes": self.process_count}

  def tracing(self):
    """Activation constraints (`sharding.constrain`) on this mesh while a function is traced."""
    return sharding.use(self.mesh, self.rules)


def resolve_dtype(dtype: str | None) -> str | None:
  """A compute dtype override: "auto" is bfloat16 on accelerators and the checkpoint's own on CPU;
  None keeps the checkpoint's."""
  if dtype is None:
    return None
  if dtype not in DTYPES:
    raise PlacementError(f"dtype {dtype}: expected one of {DTYPES}")
  if dtype == "auto":
    return None if jax.default_backend() == "cpu" else "bfloat16"
  return dtype


def load_model(checkpoint: str | os.PathLike, placement: Placement, *, dtype: str | None = None,
               attention: str | None = None, merge_lora: bool = True,
               quantize: str = "none") -> nnx.Module:
  """A checkpoint's model on `placement`'s mesh (each weight restored straight into its shards),
  in compute `dtype` (`resolve_dtype`), with any LoRA adapters folded into their base kernels
  (`merge_lora=True`): one matmul per projection when decoding instead of three. `attention`
  overrides the checkpoint's attention kernel (configs.ATTENTION; None keeps it).

  `quantize="int8"` (`models.quantize`) merges and quantizes on the host and then places the
  int8 model, so the devices never hold the float weights: LLaDA-8B's 16 GiB of bf16 would not
  fit the 16 GiB device its 8 GiB of int8 fit. It needs the adapters merged (a ValueError names
  `merge_lora` otherwise)."""
  from llada_jax.models.quantize import check_quantize
  from llada_jax.models.quantize import quantize as quantize_model
  from llada_jax.models.transformer import merge_lora as merge

  if check_quantize(quantize) == "none":
    model = ckpt.load(checkpoint, mesh=placement.mesh, rules=placement.rules,
                      dtype=resolve_dtype(dtype), attention=attention)
    return merged_lora(model, placement) if merge_lora else model
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    model = ckpt.load(checkpoint, dtype=resolve_dtype(dtype), attention=attention)
    if has_lora(model) and not merge_lora:
      raise ValueError(f"quantize={quantize!r} needs merge_lora=True: an int8 kernel cannot take "
                       f"the adapters' float update")
    model = quantize_model(merge(model), quantize)
  return sharding.shard_model(model, placement.mesh, placement.rules)


def has_lora(model: nnx.Module) -> bool:
  return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def merged_lora(model: nnx.Module, placement: Placement) -> nnx.Module:
  """`transformer.merge_lora` (W + A·B·α/r in float32, cast to W's dtype) as one compiled function
  whose outputs land in the merged model's shardings; the model itself when it has no LoRA."""
  from llada_jax.models.transformer import merge_lora

  if not has_lora(model):
    return model
  return _transformed(model, placement, merge_lora)


def _transformed(model: nnx.Module, placement: Placement,
                 transform: tp.Callable[[nnx.Module], nnx.Module]) -> nnx.Module:
  """`transform(model)` as one compiled function whose outputs land on the shardings the new
  state's logical axes give (the old arrays are freed once the new ones exist)."""
  graphdef, state = nnx.split(model)
  new_graphdef = []

  def run(state):
    g, new_state = nnx.split(transform(nnx.merge(graphdef, state)))
    new_graphdef[:] = [g]  # static: the same on every trace
    return new_state

  shardings = sharding.state_shardings(jax.eval_shape(run, state), placement.mesh,
                                       placement.rules)
  with placement.tracing():
    new_state = jax.jit(run, in_shardings=(state_shardings(state),),
                        out_shardings=shardings)(state)
  return nnx.merge(new_graphdef[0], new_state)


def state_shardings(state: nnx.State):
  """The sharding of every array of a placed model's state (explicit `in_shardings`)."""
  return jax.tree.map(lambda a: a.sharding, state)

