"""The model a run starts from: random init placed on the mesh, then converted checkpoints.

Weights are created already sharded (a jitted init with out_shardings), so an 8B model never exists
whole on one host; converted checkpoints are restored straight into their shardings as well.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from llada_jax.config_files import ConfigError
from llada_jax.models import checkpoint
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.parallel import sharding
from llada_jax.train.config import TrainConfig

log = logging.getLogger(__name__)

# Fields that may differ between a converted checkpoint's config and the run's: storage and compute
# precision, recomputation, adapters (added on top), the LM's context limit, and attention direction
# and mask token (a causal LM's weights are where a LLaDA-style fine-tune starts).
_FREE = {"dtype", "param_dtype", "remat", "lora", "max_seq_len", "causal", "mask_id"}


def create_model(cfg: TrainConfig, mesh: Mesh, rules: sharding.ShardingConfig) -> WhisperLLaDA:
  """Random init (seeded) placed on `mesh`, then `init_model` / `init_whisper` / `init_lm`."""
  mcfg = cfg.resolved_model()
  make = lambda: WhisperLLaDA(mcfg, rngs=nnx.Rngs(cfg.seed))  # noqa: E731
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  shardings = sharding.state_shardings(abstract, mesh, rules)
  state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
  model = nnx.merge(graphdef, state)
  load_pretrained(model, cfg, mesh, rules)
  return model


def _check_fits(field: str, stored, wanted) -> None:
  diffs = [f"{f.name}: checkpoint {getattr(stored, f.name)!r}, config {getattr(wanted, f.name)!r}"
           for f in dataclasses.fields(wanted)
           if f.name not in _FREE and getattr(stored, f.name) != getattr(wanted, f.name)]
  if diffs:
    raise ConfigError(f"{field}: the checkpoint does not fit the model config: {'; '.join(diffs)}")


def copy_weights(src: nnx.Module, dst: nnx.Module, what: str) -> int:
  """Copy every stored (non-RNG) variable of `src` into `dst` at the same path, cast to `dst`'s
  dtype and placed on its sharding. Variables only `dst` has (LoRA adapters) keep their init."""
  dst_flat = dict(nnx.to_flat_state(nnx.state(dst)))
  problems, n = [], 0
  for path, var in nnx.to_flat_state(nnx.state(src)):
    if checkpoint.RNG_STATE(path, var):
      continue
    name = ".".join(str(p) for p in path)
    target = dst_flat.get(path)
    if target is None:
      problems.append(f"{name}: not in the model")
      continue
    if tuple(var.shape) != tuple(target.shape):
      problems.append(f"{name}: checkpoint {tuple(var.shape)}, model {tuple(target.shape)}")
      continue
    value = var[...]
    target.set_value(jax.device_put(jnp.asarray(value, target.dtype), target[...].sharding))
    n += 1
  if problems:
    raise ConfigError(f"{what}: {len(problems)} weight(s) do not fit: {'; '.join(problems[:10])}")
  return n


def load_pretrained(model: WhisperLLaDA, cfg: TrainConfig, mesh: Mesh,
                    rules: sharding.ShardingConfig) -> None:
  m = cfg.model
  if cfg.init_model is not None:
    stored = checkpoint.read_config(cfg.init_model)
    for part in ("whisper", "qformer", "lm"):
      _check_fits(f"init_model ({part})", getattr(stored, part), getattr(m, part))
    n = copy_weights(checkpoint.load(cfg.init_model, mesh=mesh, rules=rules), model, "init_model")
    log.info("init_model %s: %d weights", cfg.init_model, n)
  if cfg.init_whisper is not None:
    _check_fits("init_whisper", checkpoint.read_config(cfg.init_whisper), m.whisper)
    whisper = checkpoint.load(cfg.init_whisper, mesh=mesh, rules=rules)
    n = copy_weights(whisper.encoder, model.encoder, "init_whisper")
    log.info("init_whisper %s: %d encoder weights", cfg.init_whisper, n)
  if cfg.init_lm is not None:
    _check_fits("init_lm", checkpoint.read_config(cfg.init_lm), m.lm)
    n = copy_weights(checkpoint.load(cfg.init_lm, mesh=mesh, rules=rules), model.lm, "init_lm")
    log.info("init_lm %s: %d weights", cfg.init_lm, n)
  if cfg.init_model is None and (cfg.init_whisper is None or cfg.init_lm is None):
    log.warning("no init_%s: those weights are random", "/".join(
        k for k in ("whisper", "lm") if getattr(cfg, f"init_{k}") is None))
