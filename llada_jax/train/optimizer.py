"""The optimizer: AdamW under a warm-up + cosine learning-rate schedule (optionally a larger rate
for the Q-Former projector and global-norm clipping), and the shardings of its state.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import optax

from llada_jax.models import stacked
from llada_jax.train.config import OptimizerConfig, TrainConfig


def lr_schedule(o: OptimizerConfig, steps: int) -> optax.Schedule:
  warmup = optax.linear_schedule(o.init_lr, o.peak_lr, max(o.warmup_steps, 1))
  if o.cosine_from == "start":
    # Diffusion-ASR (utils/optims.py): lr = end + (peak - end) (1 + cos(π s / steps)) / 2 at the
    # absolute step s once warm-up is over.
    def cosine(s):
      return o.end_lr + (o.peak_lr - o.end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * s / steps))

    return lambda s: jnp.where(s < o.warmup_steps, warmup(s), cosine(s))
  alpha = o.end_lr / o.peak_lr if o.peak_lr > 0 else 0.0
  cosine = optax.cosine_decay_schedule(o.peak_lr, max(steps - o.warmup_steps, 1), alpha=alpha)
  if o.warmup_steps == 0:
    return cosine
  return optax.join_schedules([warmup, cosine], [o.warmup_steps])


def _in_projector(params) -> tp.Any:
  """True on the projector's (Q-Former's) leaves: the mask for its larger learning rate."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, "key", None) == "projector" for k in path), params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  o = cfg.optimizer
  schedule = lr_schedule(o, cfg.steps)
  # No weight decay on 1-D tensors: biases and norm gains (the authors' split).
  # A layer stack's leading axis does not count: a stacked bias [L, D] is still a bias.
  decay_mask = lambda params: jax.tree.map_with_path(  # noqa: E731
      lambda path, p: p.ndim - stacked.in_stack(path) > 1, params)
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.projector_lr_scale != 1.0:
    adamw = optax.chain(adamw, optax.masked(optax.scale(o.projector_lr_scale), _in_projector))
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw
  return tx, schedule


def _suffix_keys(path) -> tuple:
  out = []
  for k in reversed(path):
    if not isinstance(k, jax.tree_util.DictKey):
      break
    out.append(k.key)
  return tuple(reversed(out))


def _flat_dict(tree: dict, prefix: tuple = ()) -> dict[tuple, tp.Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat_dict(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def opt_shardings(opt_abstract, params_abstract: dict, params_sh: dict, replicated):
  """A sharding for every optimizer-state leaf: `params_sh` of the parameter it mirrors (Adam
  moments, found by their trailing dict path and shape), else replicated (counts, masked-out
  nodes). `params_sh` are the parameters' shardings under the optimizer rules."""
  shapes = {k: v.shape for k, v in _flat_dict(params_abstract).items()}
  shards = _flat_dict(params_sh)

  def one(path, leaf):
    keys = _suffix_keys(path)
    for i in range(len(keys)):
      sub = keys[i:]
      if sub in shards and shapes[sub] == getattr(leaf, "shape", None):
        return shards[sub]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_abstract)
