"""Layer stacks: N layers held as one module whose variables carry a leading `layers` axis.

A Python loop over N layer modules traces N copies of the layer body: the 8B train step was ~130
unrolled bodies, so compile time and the scheduler's live ranges grew with depth. A stack is run by
one `jax.lax.scan` (one traced body whatever N), with the remat policy applied to that body, as
MaxText and Levanter do. Outside any trace (eager calls, small tests) the same body runs in a
Python loop over the layer slices: an eager scan would recompile at every call.

The stacked axis is the logical axis `layers`, never sharded (each device holds its shard of every
layer). On disk a stacked variable is still one entry per layer (`lm.layers.3.mlp.up_proj.kernel`):
conversions, checkpoints and exports keep the names of the unrolled model (`per_layer_names`).
"""

from __future__ import annotations

import contextlib
import typing as tp

import jax
import jax.numpy as jnp
from flax import nnx

LAYER_AXIS = "layers"
RNG_STATE = nnx.Any(nnx.RngKey, nnx.RngCount)

# Remat policies (configs.REMAT_POLICIES). "names" / "offload" keep the activations tagged with
# `jax.ad_checkpoint.checkpoint_name` under these names (the LM's attention output and MLP input).
SAVED_NAMES = ("attn_out", "mlp_in")

M = tp.TypeVar("M", bound=nnx.Module)


def stack(make: tp.Callable[[], M], n: int) -> M:
  """`n` layers from `n` calls of `make()` (in order, so random init draws exactly what a list of
  `n` layers would) as one module of the same class whose variables are stacked on axis 0."""
  if n < 1:
    raise ValueError(f"stack: need at least one layer, got {n}")
  layers = [make() for _ in range(n)]
  graphdef = nnx.graphdef(layers[0])

  def one(*variables):
    first = variables[0]
    value = jnp.stack([v.get_value() for v in variables])
    axes = first.get_metadata().get("logical_axes")
    if axes is None:
      return first.replace(value)
    return first.replace(value, logical_axes=(LAYER_AXIS, *axes))

  states = [nnx.state(layer) for layer in layers]
  stacked = jax.tree.map(one, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, stacked)


def stack_modules(modules: tp.Sequence[M]) -> M:
  """Modules of one structure (e.g. per-layer LoRA adapters) as one stacked module."""
  it = iter(modules)
  return stack(lambda: next(it), len(modules))


def is_stacked(variable: nnx.Variable) -> bool:
  axes = variable.get_metadata().get("logical_axes")
  return bool(axes) and axes[0] == LAYER_AXIS


def in_stack(path: tp.Sequence) -> bool:
  """Whether a variable path (tree keys or names) lies in a layer stack: `layers` followed by a
  name, not a layer index (an unrolled list, as Whisper's decoder, has the index)."""
  keys = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
  return any(k == LAYER_AXIS and i + 1 < len(keys) and not isinstance(keys[i + 1], int)
             and not str(keys[i + 1]).isdigit() for i, k in enumerate(keys))


def num_layers(layers: nnx.Module) -> int:
  return jax.tree.leaves(nnx.state(layers, nnx.Param))[0].shape[0]


def remat_policy(name: str):
  """A `jax.checkpoint` policy for a configs.REMAT_POLICIES name ("none" → no checkpoint)."""
  policies = jax.checkpoint_policies
  if name == "full":
    return policies.nothing_saveable
  if name == "dots_saveable":
    # Weight matmuls (no batch dims) are kept; the attention core is recomputed.
    return policies.dots_with_no_batch_dims_saveable
  if name == "names":
    return policies.save_only_these_names(*SAVED_NAMES)
  if name == "offload":
    return policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(SAVED_NAMES),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"remat={name!r}: expected one of none, full, dots_saveable, names, offload")


_UNROLL: list[bool] = [False]


@contextlib.contextmanager
def unrolled():
  """Trace stacks as fully unrolled scans while active: the same program without the loop, for
  tools that cannot see into loops (XLA's `cost_analysis` counts a loop body once). It acts on
  what is traced while active: a jitted function already compiled for these shapes keeps its
  scanned program, so lower a fresh one (`.lower(...)`) inside the context."""
  _UNROLL.append(True)
  try:
    yield
  finally:
    _UNROLL.pop()


def _tracing(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def scan(layers: nnx.Module, body: tp.Callable, carry, xs=None, *, remat: str = "none"):
  """Fold `carry, y = body(layer, carry, x)` over the layers of a stack, in order.

  `xs` (a pytree with leading axis N, or None) gives each layer its slice; the `y`s come back
  stacked. Each call of `body` gets a layer module holding that layer's slice of every variable;
  what `body` changes in it (dropout RNG counts) is written back to `layers`.
  """
  graphdef, state = nnx.split(layers)
  n = jax.tree.leaves(state)[0].shape[0]

  touched = [False]

  def step(carry, inputs):
    layer_state, x = inputs
    layer = nnx.merge(graphdef, layer_state)
    before = jax.tree.leaves(nnx.state(layer, RNG_STATE))
    carry, y = body(layer, carry, x)
    after = nnx.state(layer, RNG_STATE)
    # Only a body that drew random numbers (dropout) advanced a count. Writing unchanged state
    # back would be a mutation from inside whatever loop the caller traces us in (decoding's
    # while_loop), which NNX rightly refuses.
    touched[0] |= any(a is not b for a, b in zip(before, jax.tree.leaves(after)))
    return carry, (y, after)

  if not _tracing((state, carry, xs)):
    ys, rngs = [], []
    for i in range(n):
      carry, (y, rng) = step(carry, jax.tree.map(lambda a, i=i: a[i], (state, xs)))
      ys.append(y)
      rngs.append(rng)
    ys, rngs = (jax.tree.map(lambda *a: jnp.stack(a), *trees) for trees in (ys, rngs))
  else:
    if remat != "none":
      # prevent_cse guards against XLA merging the recomputation with the forward; a scan body
      # cannot be merged across iterations, so it is not needed and would block optimisations.
      step = jax.checkpoint(step, policy=remat_policy(remat), prevent_cse=False)
    carry, (ys, rngs) = jax.lax.scan(step, carry, (state, xs), length=n,
                                     unroll=n if _UNROLL[-1] else 1)
  if touched[0]:
    nnx.update(layers, rngs)
  return carry, ys


def per_layer_names(state: nnx.State) -> dict[str, tuple[tuple, int | None]]:
  """{on-disk name: (flat state path, layer index or None)} for every variable of `state`.

  A stacked variable at `lm/layers/mlp/up_proj/kernel` is N entries `lm.layers.{i}.mlp.up_proj.
  kernel`, the names of the unrolled model, so conversions and stored checkpoints are unchanged.
  """
  out = {}
  for path, variable in nnx.to_flat_state(state):
    parts = [str(p) for p in path]
    if in_stack(path):
      at = parts.index(LAYER_AXIS) + 1
      for i in range(variable.shape[0]):
        out[".".join(parts[:at] + [str(i)] + parts[at:])] = (path, i)
    else:
      out[".".join(parts)] = (path, None)
  return out


def per_layer_items(state: nnx.State) -> tp.Iterator[tuple[str, jax.Array]]:
  """(on-disk name, array) for every variable of `state`, stacked ones one entry per layer."""
  for path, variable in nnx.to_flat_state(state):
    parts = [str(p) for p in path]
    if in_stack(path):
      at = parts.index(LAYER_AXIS) + 1
      value = variable.get_value()
      for i in range(variable.shape[0]):
        yield ".".join(parts[:at] + [str(i)] + parts[at:]), value[i]
    else:
      yield ".".join(parts), variable.get_value()


def layer_shape(variable: nnx.Variable) -> tuple[int, ...]:
  """The shape of one on-disk entry of `variable` (one layer's slice if it is stacked)."""
  shape = tuple(variable.shape)
  return shape[1:] if is_stacked(variable) else shape


def assign(state: nnx.State, items: tp.Iterable[tuple[str, tp.Any]],
           place: tp.Callable[[tuple, jax.Array], jax.Array] = lambda key, value: value) -> int:
  """Set `state`'s variables from (on-disk name, array) pairs in any order; a stacked variable is
  set once all its layers have come (`place(path, value)` may put it on its sharding). Returns
  the number of pairs; a ValueError names a stacked weight left with layers missing."""
  flat = dict(nnx.to_flat_state(state))
  names = per_layer_names(state)
  pending: dict[tuple, dict[int, jax.Array]] = {}
  n = 0
  for name, array in items:
    key, i = names[name]
    variable = flat[key]
    array = jnp.asarray(array, dtype=variable.dtype)
    n += 1
    if i is None:
      variable.set_value(place(key, array))
      continue
    got = pending.setdefault(key, {})
    got[i] = array
    if len(got) == variable.shape[0]:
      variable.set_value(place(key, jnp.stack([got[j] for j in range(len(got))])))
      del pending[key]
  if pending:
    where = {"/".join(map(str, k)): sorted(set(range(flat[k].shape[0])) - set(v))
             for k, v in pending.items()}
    raise ValueError(f"layer stacks left incomplete (missing layer indices): {where}")
  return n


def layer(layers: nnx.Module, i: int) -> nnx.Module:
  """Layer `i` of a stack as a module of its own (a copy of its slices: for inspection)."""
  graphdef, state = nnx.split(layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
