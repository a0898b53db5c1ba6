"""Logical axis names → mesh axes.

Every weight carries its logical axis names (variable metadata `logical_axes`, e.g. `('embed',
'mlp')`); activations are constrained by name through `constrain`. A `ShardingConfig` maps names to
the mesh axes `data`, `fsdp`, `tensor`; changing parallelism means changing rules, never model code.

A train step places three collections, each by its own rules: the frozen weights, the trained ones
and their optimizer state. Presets by name (`preset`): `full_fsdp` (every weight FSDP-sharded, the
default), `lora_dp` (frozen weights whole over data × fsdp, optimizer state ZeRO-sharded) and
`replicated`. A weight dimension that its mesh axes do not divide is an error, not a silent
replication, unless the rule set's `replicate` list allows it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
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
# `layers` is the leading axis of a layer stack (models.stacked): never sharded, as each layer
# runs on every device in turn.
WEIGHT_AXES = ("vocab", "embed", "mlp", "q_heads", "kv_heads", "norm", "conv_in", "lora_rank",
               "positions", "queries", "qformer_embed", "qformer_mlp", "qformer_heads", "layers")
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_mlp", "act_heads", "act_kv_heads",
                   "act_vocab")


Rules = tuple[tuple[str, MeshAxes], ...]
# Weights by role in a train step: the frozen base (encoder, LM), the trained ones (LoRA adapters,
# Q-Former) and the optimizer state that mirrors them. Inference places everything as "frozen".
COLLECTIONS = ("frozen", "trained", "optimizer")


class ShardingError(ValueError):
  """A weight that its rules would split over mesh axes that do not divide it."""


def _targets(target: MeshAxes) -> tuple[str, ...]:
  return target if isinstance(target, tuple) else ((target,) if target else ())


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """Rules from logical axis names to mesh axes, per collection.

  `rules` maps every logical name: activations, and the weights of every collection. `trained`
  and `optimizer` replace some weight-axis rules for the trained weights and for their optimizer
  state (Adam moments). A weight dimension whose mesh axes do not divide it is a ShardingError,
  unless a `replicate` entry (regex searched in the weight's path, logical axis) lets it stay
  whole there.
  """

  rules: Rules
  trained: Rules = ()
  optimizer: Rules = ()
  replicate: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    names = [name for name, _ in self.rules]
    missing = set(WEIGHT_AXES + ACTIVATION_AXES) - set(names)
    if missing:
      raise ValueError(f"ShardingConfig: no rule for logical axes {sorted(missing)}")
    for field in ("rules", "trained", "optimizer"):
      for name, target in getattr(self, field):
        if field != "rules" and name not in WEIGHT_AXES:
          raise ValueError(f"ShardingConfig.{field} rule {name!r}: not a weight axis {WEIGHT_AXES}")
        for axis in _targets(target):
          if axis not in MESH_AXES:
            raise ValueError(f"ShardingConfig.{field} rule {name!r} → {axis!r}: not a mesh axis "
                             f"{MESH_AXES}")
    for pattern, name in self.replicate:
      re.compile(pattern)
      if name not in WEIGHT_AXES:
        raise ValueError(f"ShardingConfig.replicate ({pattern!r}, {name!r}): not a weight axis")

  def table(self, collection: str = "frozen") -> dict[str, MeshAxes]:
    if collection not in COLLECTIONS:
      raise ValueError(f"collection {collection!r}: expected one of {COLLECTIONS}")
    table = dict(self.rules)
    if collection != "frozen":
      table.update(getattr(self, collection))
    return table

  def mesh_axes(self, logical: tp.Sequence[str | None], collection: str = "frozen"
                ) -> PartitionSpec:
    table = self.table(collection)
    out = []
    for name in logical:
      if name is None:
        out.append(None)
      elif name not in table:
        raise KeyError(f"logical axis {name!r} has no sharding rule")
      else:
        out.append(table[name])
    return PartitionSpec(*out)

  def may_replicate(self, path: str, name: str) -> bool:
    return any(n == name and re.search(p, path) for p, n in self.replicate)

  @classmethod
  def full_fsdp(cls) -> ShardingConfig:
    """Every weight, trained or not, and its optimizer state: model dim over fsdp, heads / MLP /
    vocab over tensor; batch over data × fsdp. Each layer's weights are gathered over fsdp where
    they are used (forward, remat, backward): the plan for full fine-tuning, or when the frozen
    weights do not fit a device whole."""
    return cls(rules=(
        ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("q_heads", "tensor"),
        ("kv_heads", "tensor"), ("norm", None), ("conv_in", None), ("lora_rank", None),
        ("positions", None), ("queries", None), ("qformer_embed", None),
        ("qformer_mlp", "tensor"), ("qformer_heads", "tensor"), ("layers", None),
        ("batch", ("data", "fsdp")), ("length", None), ("act_embed", None),
        ("act_mlp", "tensor"), ("act_heads", "tensor"), ("act_kv_heads", "tensor"),
        ("act_vocab", "tensor"),
    ), replicate=_WHISPER_VOCAB)

  @classmethod
  def lora_dp(cls) -> ShardingConfig:
    """LoRA training: frozen weights whole on every device of data × fsdp (split over tensor
    only), so the step gathers none of them; the batch over data × fsdp. The trained weights
    (adapters, Q-Former: ~30 M at paper scale) are placed like the frozen ones and their Adam
    moments split ZeRO-style over data × fsdp: the step all-reduces gradients of the trained
    weights only. Needs the frozen weights / tensor to fit one device."""
    rules = dict(cls.full_fsdp().rules)
    rules["embed"] = None
    zero = ("data", "fsdp")
    return cls(rules=tuple(rules.items()),
               optimizer=(("embed", zero), ("qformer_embed", zero)), replicate=_WHISPER_VOCAB)

  @classmethod
  def replicated(cls) -> ShardingConfig:
    """Data parallel only: every weight whole on every device."""
    rules = dict.fromkeys(WEIGHT_AXES + ACTIVATION_AXES)
    rules["batch"] = ("data", "fsdp")
    return cls(rules=tuple(rules.items()))


# Whisper's vocabularies (51864-51866 tokens) have odd factors: its decoder's token embedding
# (~130 MB) stays whole where `tensor` does not divide it.
_WHISPER_VOCAB = ((r"(^|/)decoder/embed_tokens/", "vocab"),)

PRESETS: dict[str, tp.Callable[[], ShardingConfig]] = {
    "full_fsdp": ShardingConfig.full_fsdp, "lora_dp": ShardingConfig.lora_dp,
    "replicated": ShardingConfig.replicated}
PRESET_NAMES = tuple(PRESETS)


def preset(name: str) -> ShardingConfig:
  """A preset rule set by name (`PRESET_NAMES`); a ValueError naming the choices otherwise."""
  if name not in PRESETS:
    raise ValueError(f"sharding preset {name!r}: expected one of {PRESET_NAMES}")
  return PRESETS[name]()


def preset_name(config: ShardingConfig) -> str:
  """The preset `config` equals, or "custom"."""
  return next((n for n, make in PRESETS.items() if make() == config), "custom")


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


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh,
         indivisible: tp.Callable[[int, int, tuple[str, ...], int], None]) -> PartitionSpec:
  """`spec` made placeable: a mesh axis that an earlier dimension already uses (e.g. ('embed',
  'embed') → fsdp twice) is dropped; a dimension its mesh axes do not divide goes to
  `indivisible(dim index, size, mesh axes, their size)`, which raises or lets it stay whole."""
  out, used = [], set()
  for i, (dim, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    names = _targets(axes)
    size = math.prod(mesh.shape[a] for a in names) if names else 1
    if used & set(names):
      axes = None
    elif size > 1 and dim % size:
      indivisible(i, dim, names, size)
      axes = None
    else:
      used |= set(names)
    out.append(axes)
  return PartitionSpec(*out)


def path_str(path: tp.Sequence) -> str:
  """A weight's path as `lm/layers/self_attn/q_proj/kernel` (from tree keys or plain names)."""
  keys = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
  return "/".join(str(k) for k in keys)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get("logical_axes")


def weight_spec(config: ShardingConfig, mesh: Mesh, where: str, names: tp.Sequence[str | None],
                shape: tuple[int, ...], collection: str = "frozen") -> PartitionSpec:
  """The PartitionSpec of the weight at path `where` (logical axes `names`) under `collection`'s
  rules; a ShardingError naming the weight, dimension and mesh axes if they do not divide it and
  no `replicate` entry allows it to stay whole."""
  if len(names) != len(shape):
    raise ValueError(f"{where}: logical axes {tuple(names)} do not match shape {shape}")

  def indivisible(i, dim, axes, size):
    if config.may_replicate(where, names[i]):
      log.info("%s: dim %d (%s) of size %d not divisible by mesh axes %s (size %d); replicated "
               "(allowed by the rules)", where, i, names[i], dim, axes, size)
      return
    mesh_sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
    raise ShardingError(
        f"{where}: dim {i} ({names[i]!r}, size {dim}) of shape {shape} is not divisible by mesh "
        f"axes {mesh_sizes} (together {size}) under the {collection} rules. Pick a mesh whose "
        f"{'/'.join(axes)} size divides {dim}, another sharding preset, or let it stay whole with "
        f"a ShardingConfig.replicate entry (path regex, {names[i]!r})")

  return _fit(config.mesh_axes(names, collection), shape, mesh, indivisible)


def state_shardings(state: nnx.State, mesh: Mesh, config: ShardingConfig,
                    collection: str = "frozen") -> nnx.State:
  """A NamedSharding for every variable of `state` from its logical axes under `collection`'s
  rules (replicated if it has none)."""

  def one(path, variable):
    names = logical_axes(variable)
    where = path_str(path)
    spec = (PartitionSpec() if names is None else
            weight_spec(config, mesh, where, names, tuple(variable.shape), collection))
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def place(tree, shardings):
  """`tree`'s arrays on `shardings` (a matching tree). An array already placed equivalently is
  kept as it is (no copy: frozen weights may fill a device); global arrays are resharded by one
  jitted identity, which works across processes where `device_put` does not (typed PRNG keys);
  anything else is `device_put`."""
  leaves, treedef = jax.tree.flatten(tree)
  targets = treedef.flatten_up_to(shardings)
  out, moves = list(leaves), []
  for i, (x, target) in enumerate(zip(leaves, targets)):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      continue
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      moves.append(i)
    else:
      out[i] = jax.device_put(x, target)
  if moves:  # one program for all of them, not a compile per array
    moved = jax.jit(lambda *a: a, out_shardings=tuple(targets[i] for i in moves))(
        *(leaves[i] for i in moves))
    for i, y in zip(moves, moved):
      out[i] = y
  return treedef.unflatten(out)


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
  # Activations may stay whole where a mesh axis does not divide them (4 heads on tensor=8, a
  # batch of 1 while decoding): that costs compute, never correctness or a weight's memory.
  spec = _fit(config.mesh_axes(names), x.shape, mesh, lambda *_: None)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def map_rows(fn: tp.Callable[..., jax.Array], *xs: jax.Array) -> jax.Array:
  """`fn(*xs)` for a row-independent `fn`, run per batch shard (`jax.shard_map` over the batch axes
  of the active `use(...)`), so that each device computes only its own rows. For ops XLA's SPMD
  partitioner does not split over a batch dimension (the FFT: it gathers the whole batch to every
  device). Without an active mesh, or with a batch its shards do not divide, `fn(*xs)` as is."""
  if not _ACTIVE:
    return fn(*xs)
  mesh, config = _ACTIVE[-1]
  axes = batch_axes(config)
  ways = batch_ways(mesh, config)
  if ways == 1 or any(x.shape[0] % ways for x in xs):
    return fn(*xs)
  spec = PartitionSpec(axes)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(xs), out_specs=spec)(*xs)


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


def put_rows(local, target: jax.ShapeDtypeStruct) -> jax.Array:
  """This process's rows of a batch → the global array `target` (its shape, dtype and batch
  sharding): `jax.make_array_from_process_local_data`, each process passing its own rows (in the
  order `process_rows` gives). Training and inference place their batches through this."""
  return jax.make_array_from_process_local_data(target.sharding, np.asarray(local, target.dtype),
                                                target.shape)


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
