"""Logical axis names → mesh axes.

Every weight carries its logical axis names (variable metadata `logical_axes`, e.g. `('embed',
'mlp')`); activations are constrained by name through `constrain`. A `ShardingConfig` maps names to
the mesh axes `data`, `fsdp`, `tensor`; changing parallelism means changing rules, never model code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import typing as tp

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None

# Weight axes and activation axes are named apart (as MaxText does) so that, e.g., FSDP can shard
# the `embed` dimension of weights while activations keep `act_embed` whole.
WEIGHT_AXES = ("vocab", "embed", "mlp", "q_heads", "kv_heads", "norm", "conv_in", "lora_rank",
               "positions", "queries", "qformer_embed", "qformer_mlp", "qformer_heads")
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_mlp", "act_heads", "act_kv_heads",
                   "act_vocab")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """Rules from logical axis names to mesh axes. Every logical name must have a rule."""

  rules: tuple[tuple[str, MeshAxes], ...]

  def __post_init__(self):
    names = [name for name, _ in self.rules]
    missing = set(WEIGHT_AXES + ACTIVATION_AXES) - set(names)
    if missing:
      raise ValueError(f"ShardingConfig: no rule for logical axes {sorted(missing)}")
    for name, target in self.rules:
      for axis in (target if isinstance(target, tuple) else (target,)):
        if axis is not None and axis not in MESH_AXES:
          raise ValueError(f"ShardingConfig rule {name!r} → {axis!r}: not a mesh axis {MESH_AXES}")

  def mesh_axes(self, logical: tp.Sequence[str | None]) -> PartitionSpec:
    table = dict(self.rules)
    out = []
    for name in logical:
      if name is None:
        out.append(None)
      elif name not in table:
        raise KeyError(f"logical axis {name!r} has no sharding rule")
      else:
        out.append(table[name])
    return PartitionSpec(*out)

  @classmethod
  def fsdp_tp(cls) -> ShardingConfig:
    """Batch over data×fsdp, weights' model dim over fsdp, heads/mlp/vocab over tensor."""
    return cls(rules=(
        ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("q_heads", "tensor"),
        ("kv_heads", "tensor"), ("norm", None), ("conv_in", None), ("lora_rank", None),
        ("positions", None), ("queries", None), ("qformer_embed", None),
        ("qformer_mlp", "tensor"), ("qformer_heads", "tensor"),
        ("batch", ("data", "fsdp")), ("length", None), ("act_embed", None),
        ("act_mlp", "tensor"), ("act_heads", "tensor"), ("act_kv_heads", "tensor"),
        ("act_vocab", "tensor"),
    ))

  @classmethod
  def replicated(cls) -> ShardingConfig:
    """Data parallel only: every weight whole on every device."""
    rules = {name: None for name in WEIGHT_AXES + ACTIVATION_AXES}
    rules["batch"] = ("data", "fsdp")
    return cls(rules=tuple(rules.items()))


def mesh_shape(shape: tp.Sequence[int], num_devices: int) -> tuple[int, ...]:
  """`shape` with its one allowed -1 resolved to the remaining devices; a ValueError naming the
  numbers if it does not fit `num_devices`."""
  shape = list(shape)
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {tuple(shape)}: positive sizes, at most one of them -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"have {num_devices}")
  return tuple(shape)


def make_mesh(shape: tp.Sequence[int], axes: tp.Sequence[str] = MESH_AXES,
              devices: tp.Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `axes`; one entry of `shape` may be -1 to take the remaining devices.

  Axes are `Auto` (GSPMD propagation): jax 0.10's `make_mesh` default is Explicit, which would make
  every gather of a sharded embedding demand an `out_sharding=`.
  """
  devices = list(devices if devices is not None else jax.devices())
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {tuple(shape)} does not match axes {tuple(axes)}")
  shape = mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                       devices=devices)


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, what: str) -> PartitionSpec:
  """Make a spec placeable: drop mesh axes that do not divide a dimension (small test models, odd
  vocab sizes) or that an earlier dimension already uses (e.g. ('embed', 'embed') → fsdp twice)."""
  out, used = [], set()
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    size = math.prod(mesh.shape[a] for a in names) if names else 1
    if size > 1 and dim % size:
      log.info("%s: dim %d not divisible by mesh axes %s (size %d); replicated", what, dim, names,
               size)
      axes = None
    elif used & set(names):
      log.info("%s: mesh axes %s already used by an earlier dim; replicated", what, names)
      axes = None
    else:
      used |= set(names)
    out.append(axes)
  return PartitionSpec(*out)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get("logical_axes")


def state_shardings(state: nnx.State, mesh: Mesh, config: ShardingConfig) -> nnx.State:
  """A NamedSharding for every variable of `state`, from its logical axes (replicated if none)."""

  def one(path, variable):
    names = logical_axes(variable)
    where = "/".join(str(p) for p in path)
    if names is None:
      spec = PartitionSpec()
    else:
      if len(names) != len(variable.shape):
        raise ValueError(f"{where}: logical axes {names} do not match shape {variable.shape}")
      spec = _fit(config.mesh_axes(names), tuple(variable.shape), mesh, where)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, config: ShardingConfig) -> nnx.Module:
  """Place every weight of `model` on `mesh` by its logical axes (in place; returns the model)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, config)
  nnx.update(model, jax.device_put(state, shardings))
  return model


_ACTIVE: list[tuple[Mesh, ShardingConfig]] = []


@contextlib.contextmanager
def use(mesh: Mesh, config: ShardingConfig):
  """Make `constrain` active (while tracing) for this mesh and rules."""
  _ACTIVE.append((mesh, config))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVE.pop()


def constrain(x: jax.Array, names: tp.Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside `use(...)`."""
  if not _ACTIVE:
    return x
  mesh, config = _ACTIVE[-1]
  spec = _fit(config.mesh_axes(names), x.shape, mesh, "activation")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_axes(config: ShardingConfig) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over (data × fsdp with either rule set)."""
  target = config.mesh_axes(("batch",))[0]
  return target if isinstance(target, tuple) else ((target,) if target else ())


def batch_ways(mesh: Mesh | None = None, config: ShardingConfig | None = None) -> int:
  """Data-parallel shards of the batch on `mesh` under `config`; without them, under the active
  `use(...)` (1 outside one)."""
  if mesh is None or config is None:
    if not _ACTIVE:
      return 1
    mesh, config = _ACTIVE[-1]
  return math.prod(mesh.shape[a] for a in batch_axes(config))


def batch_sharding(mesh: Mesh, config: ShardingConfig, shape: tp.Sequence[int]) -> NamedSharding:
  """Sharding for a global batch: leading dim over the batch axes, the rest replicated."""
  spec = config.mesh_axes(("batch",) + (None,) * (len(shape) - 1))
  axes = batch_axes(config)
  ways = batch_ways(mesh, config)
  if shape[0] % ways:
    raise ValueError(f"batch of shape {tuple(shape)}: batch size {shape[0]} is not divisible by "
                     f"the {ways} data-parallel shards of mesh axes {axes}")
  return NamedSharding(mesh, spec)


def process_rows(batch: NamedSharding, rows: int, process_index: int | None = None,
                 process_of: tp.Callable[[jax.Device], int] = lambda d: d.process_index
                 ) -> np.ndarray:
  """The rows of a [rows, ...] global array sharded as `batch` that process `process_index` (this
  one by default) holds, in the order `jax.make_array_from_process_local_data` reads them from
  that process's local rows: ascending blocks, one per distinct shard its devices hold.

  Which rows a host loads must follow from the sharding, not from the process count: a mesh axis
  the batch is replicated over (`tensor`) may span hosts, and then those hosts hold, and must load,
  the same rows. `process_of` maps a device to its process (tests simulate hosts with it).
  """
  p = jax.process_index() if process_index is None else process_index
  blocks: dict[int, int] = {}
  for device, index in batch.devices_indices_map((rows,)).items():
    if process_of(device) == p:
      start, stop, _ = index[0].indices(rows)
      blocks[start] = stop
  if not blocks:
    raise ValueError(f"process {p} holds no device of the mesh {dict(batch.mesh.shape)}")
  return np.concatenate([np.arange(start, blocks[start]) for start in sorted(blocks)])
