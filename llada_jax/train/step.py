"""The sharded train step and eval step.

State is a plain pytree so that optax and orbax see ordinary dicts of arrays:

    {"params": trained weights {path: array} (master dtype), "opt": optax state,
     "step": int32 (steps taken, skipped ones included), "updates": int32 (updates applied),
     "key": uint32 key data}

The frozen weights (encoder, LM base, RNG streams) are a separate `nnx.State` argument that the step
reads but never returns. Both are jitted with explicit in/out shardings from the weights' logical
axes (`sharding.state_shardings`), so the step runs unchanged on any (data, fsdp, tensor) mesh.

Randomness is a pure function of (seed, step): the masks, t and LoRA dropout of step s come from
fold_in(key, s), so a resumed run replays the uninterrupted one bit for bit.
"""

from __future__ import annotations

import logging
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llada_jax.models import features
from llada_jax.models.whisper_llada import TRAINABLE, WhisperLLaDA
from llada_jax.parallel import sharding
from llada_jax.train import batches, losses
from llada_jax.train.config import TrainConfig
from llada_jax.train.optimizer import make_optimizer, opt_shardings

log = logging.getLogger(__name__)


def trainable_filter(cfg: TrainConfig) -> nnx.filterlib.Filter:
  if cfg.full_finetune:  # every weight but the frozen encoder (and its non-Param buffers)
    frozen = ("encoder", "embed_tokens", "lm_head") if cfg.freeze_embeddings else ("encoder",)
    return nnx.All(nnx.Param, *(nnx.Not(nnx.PathContains(name)) for name in frozen))
  return TRAINABLE


def rules_for(cfg: TrainConfig) -> sharding.ShardingConfig:
  return sharding.preset(cfg.sharding)


def response_logits(model: WhisperLLaDA, batch: dict, tokens: jax.Array, *, causal: bool,
                    n_mels: int, mel_frames: int) -> jax.Array:
  """Logits [B, R, V] for the response tokens of [prompt, audio, tokens].

  Diffusion: the logits at the response positions. AR: one position earlier, so row i predicts
  response token i (the first from the last audio position). Only these R rows go through the
  vocabulary projection: at 126k vocab the full-sequence logits would dominate memory. Response
  positions ≥ batch["target_len"] are key-masked.
  """
  if "enc" in batch:  # cached outputs of the frozen encoder
    prefix = model.prefix_embeds(batch["prompt"], encoded=batch["enc"])
  else:
    mel = features.log_mel(batch["audio"], n_mels=n_mels, frames=mel_frames)
    prefix = model.prefix_embeds(batch["prompt"], mel)
  r = tokens.shape[1]
  # Response positions past a row's target length do not exist in Diffusion-ASR's batch (it pads
  # to the group's longest transcript): they must not be attended either.
  visible = jnp.arange(r)[None, :] < batch["target_len"][:, None]
  logits, _ = model.forward(prefix, tokens, response_mask=visible,
                            rows="shifted" if causal else "response")
  return logits


def _targets(batch: dict) -> jax.Array:
  """[B, R] bool: the response positions the diffusion objective may mask and train."""
  r = batch["response"].shape[1]
  return jnp.arange(r)[None, :] < batch["target_len"][:, None]


def _stable_id(path) -> int:
  return zlib.crc32("/".join(str(p) for p in path).encode())


def _dropout_key(path, key, shape):
  """A dropout stream's key from the step key and its path (stable across processes, unlike
  Python's hash); a layer stack's stream ([L] keys) gets one key per layer."""
  key = jax.random.fold_in(key, _stable_id(path))
  return jax.random.split(key, shape) if shape else key


class Trainer:
  """Jitted train/eval steps for one config, model and mesh.

  `model` may be abstract (`nnx.eval_shape`): then only `lower()` is usable (tools/plan.py).
  Inputs are `audio` [B, mel_frames*160] (log-mel computed in the step) or, with
  `from_encoder=True`, `enc` [B, mel_frames/2, whisper d_model] (cached encoder outputs).
  """

  def __init__(self, cfg: TrainConfig, model: WhisperLLaDA, mesh: Mesh, *, prompt_len: int,
               from_encoder: bool = False, rules: sharding.ShardingConfig | None = None,
               abstract: bool = False):
    self.cfg, self.mesh = cfg, mesh
    self.rules = rules or rules_for(cfg)
    self.prompt_len, self.from_encoder = prompt_len, from_encoder
    self.model_cfg = model.config
    self.tx, self.schedule = make_optimizer(cfg)
    wrt = trainable_filter(cfg)
    model.train()  # LoRA dropout on (a static attribute: it lives in the graphdef)
    self.train_def, params, frozen = nnx.split(model, wrt, ...)
    model.eval()
    self.eval_def = nnx.split(model, wrt, ...)[0]
    self.replicated = NamedSharding(mesh, PartitionSpec())
    master = jnp.dtype(cfg.master_dtype)

    # Trained weights as a pure dict in the master dtype; the template turns it back into State.
    self._template = [(p, v.replace(jax.ShapeDtypeStruct(v.shape, master)))
                      for p, v in nnx.to_flat_state(params)]
    self.params_sh = nnx.to_pure_dict(
        sharding.state_shardings(params, mesh, self.rules, "trained"))
    self.frozen_sh = sharding.state_shardings(frozen, mesh, self.rules, "frozen")
    moments_sh = nnx.to_pure_dict(sharding.state_shardings(params, mesh, self.rules, "optimizer"))
    params_abs = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, master),
                              nnx.to_pure_dict(params))
    opt_abs = jax.eval_shape(self.tx.init, params_abs)
    self.state_sh = {"params": self.params_sh,
                     "opt": opt_shardings(opt_abs, params_abs, moments_sh, self.replicated),
                     "step": self.replicated, "updates": self.replicated, "key": self.replicated}
    self._abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {"params": params_abs, "opt": opt_abs,
         "step": jax.ShapeDtypeStruct((), jnp.int32),
         "updates": jax.ShapeDtypeStruct((), jnp.int32),
         "key": jax.ShapeDtypeStruct((2,), jnp.uint32)}, self.state_sh)
    self._abstract_frozen = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), frozen, self.frozen_sh)
    if abstract:
      self.frozen, self._params0 = None, None
    else:
      self.frozen = sharding.place(frozen, self.frozen_sh)
      self._params0 = jax.tree.map(lambda x: x.astype(master), nnx.to_pure_dict(params))
    self.eval_key_data = jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), 0x0E7A1))

    batch_sh = {k: s.sharding for k, s in self.abstract_batch().items()}
    metric_sh = self.replicated
    self._train_jit = jax.jit(
        self._train_step, in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
        out_shardings=(self.state_sh, metric_sh), donate_argnums=(0,))
    self._eval_jit = jax.jit(
        self._eval_step, in_shardings=(self.params_sh, self.frozen_sh, batch_sh, self.replicated),
        out_shardings=metric_sh)
    self._grads_jit = jax.jit(self._grads_only,
                              in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
                              out_shardings=(metric_sh, self.params_sh))
    self._train_compiled = None
    self._eval_compiled = None

  # -- shapes and placement -----------------------------------------------------------------

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.cfg.audio_len + self.cfg.data.response_len

  def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
    c, b = self.cfg, self.cfg.batch_size
    if self.from_encoder:
      w = self.model_cfg.whisper
      feats = ("enc", (b, c.data.mel_frames // 2, w.d_model), jnp.float32)
    else:
      feats = ("audio", (b, c.data.samples), jnp.float32)
    return {feats[0]: feats[1:], "prompt": ((b, self.prompt_len), jnp.int32),
            "response": ((b, c.data.response_len), jnp.int32), "response_len": ((b,), jnp.int32),
            "target_len": ((b,), jnp.int32), "audio_len": ((b,), jnp.int32),
            "valid": ((b,), jnp.bool_)}

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(
        self.mesh, self.rules, shape)) for k, (shape, dtype) in self.batch_shapes().items()}

  def abstract_state(self) -> dict:
    return self._abstract_state

  def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows → global arrays sharded over the batch axes (`sharding.put_rows`, as
    `Placement.put`)."""
    return {k: sharding.put_rows(local[k], spec) for k, spec in self.abstract_batch().items()}

  def init_state(self) -> dict:
    if self._params0 is None:
      raise RuntimeError("Trainer was built from an abstract model: nothing to initialise")
    opt = jax.jit(self.tx.init, out_shardings=self.state_sh["opt"])(self._params0)
    state = {"params": self._params0, "opt": opt, "step": jnp.zeros((), jnp.int32),
             "updates": jnp.zeros((), jnp.int32),
             "key": jax.random.key_data(jax.random.key(self.cfg.seed))}
    return jax.device_put(state, self.state_sh)

  def release_init(self) -> None:
    """Drop the initial trained weights kept for `init_state` (a full fine-tune's are large)."""
    self._params0 = None

  def to_state(self, params: dict) -> nnx.State:
    flat = {}
    for path, var in self._template:
      node = params
      for p in path:
        node = node[p]
      flat[path] = var.replace(node)
    return nnx.from_flat_state(flat)

  def template_params(self) -> dict:
    """Zeros shaped as the trained weights: enough to merge the model when only frozen parts run."""
    out: dict = {}
    for path, var in self._template:
      node = out
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = jnp.zeros(var.shape, var.dtype)
    return out

  def model(self, state: dict) -> WhisperLLaDA:
    """The model with `state`'s trained weights, in eval mode (for decoding / export)."""
    return nnx.merge(self.eval_def, self.to_state(state["params"]), self.frozen)

  # -- the computation ----------------------------------------------------------------------

  def _loss_terms(self, graphdef, params, frozen, batch, tokens, noise, dropout_key):
    cfg = self.cfg
    # Fresh Variable objects at this trace level (tree.map rebuilds them): reseeding below mutates
    # the RNG streams, which NNX forbids on Variables created outside the grad trace.
    frozen = jax.tree.map(lambda x: x, frozen)
    model = nnx.merge(graphdef, self.to_state(params), frozen)
    if dropout_key is not None:
      nnx.reseed(model, default=dropout_key, policy=_dropout_key)
    logits = response_logits(model, batch, tokens, causal=cfg.objective == "ar",
                             n_mels=self.model_cfg.whisper.n_mels, mel_frames=cfg.data.mel_frames)
    if cfg.objective == "ar":
      return losses.ar_loss(logits, batch["response"], batch["response_len"], batch["valid"])
    return losses.diffusion_loss(logits, batch["response"], noise, batch["valid"],
                                 weighting=cfg.weighting, targets=_targets(batch))

  def _noise(self, key, batch):
    if self.cfg.objective == "ar":
      return batch["response"], None
    d = self.cfg.data
    noise = losses.sample_noise(
        key, batch["response"], self.model_cfg.lm.mask_id, weighting=self.cfg.weighting,
        eps=self.cfg.mask_eps, targets=_targets(batch), valid=batch["valid"],
        pad_group=d.pad_group if d.response_eos == "group_max" else None)
    return noise.tokens, noise

  def _grads(self, params, frozen, batch, key):
    """Σ loss terms and their gradient over the grad_accum micro-batches, then divided once."""
    noise_key, dropout_key = jax.random.split(key)
    # Noise is drawn for the whole global batch before splitting it, so accumulation changes only
    # the order of the sums, never which tokens are masked.
    tokens, noise = self._noise(noise_key, batch)
    data = {**batch, "tokens": tokens}
    if noise is not None:
      data.update(masked=noise.masked, p_mask=noise.p_mask, weight=noise.weight)

    def terms(p, mb, k):
      nz = None if noise is None else losses.Noise(mb["tokens"], mb["masked"], mb["p_mask"],
                                                   mb["weight"])
      return self._loss_terms(self.train_def, p, frozen, mb, mb["tokens"], nz, k)

    grad_fn = jax.value_and_grad(terms, has_aux=True)
    a = self.cfg.grad_accum
    if a == 1:
      (total, count), grads = grad_fn(params, data, dropout_key)
    else:
      # Micro-batch j takes rows j, j + a, …: each one stays spread over every data shard.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 0, 1), data)

      def body(carry, xs):
        g_acc, t_acc, c_acc = carry
        i, mb = xs
        (t, c), g = grad_fn(params, mb, jax.random.fold_in(dropout_key, i))
        return (jax.tree.map(jnp.add, g_acc, g), t_acc + t, c_acc + c), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, total, count), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
          (jnp.arange(a), micro))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
    return total / denom, count, grads

  def _step_key(self, state):
    return jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])

  def _grads_only(self, state, frozen, batch):
    loss, _, grads = self._grads(state["params"], frozen, batch, self._step_key(state))
    return loss, grads

  def _train_step(self, state, frozen, batch):
    params, opt = state["params"], state["opt"]
    loss, count, grads = self._grads(params, frozen, batch, self._step_key(state))
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = self.tx.update(grads, opt, params)
    new_params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves weights and optimizer untouched: the state in memory (and so every
    # checkpoint) stays the last finite one, whatever the nan_policy does next.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    new_state = {"params": keep(new_params, params), "opt": keep(new_opt, opt),
                 "step": state["step"] + 1, "updates": state["updates"] + ok.astype(jnp.int32),
                 "key": state["key"]}
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(state["updates"]),
               "finite": ok, "targets": count,
               "tokens": jnp.sum(batches.real_tokens(self.cfg, self.prompt_len, batch))}
    return new_state, metrics

  def _eval_step(self, params, frozen, batch, index):
    key = jax.random.fold_in(jax.random.wrap_key_data(self.eval_key_data), index)
    tokens, noise = self._noise(key, batch)
    total, count = self._loss_terms(self.eval_def, params, frozen, batch, tokens, noise, None)
    return {"total": total, "count": count}

  # -- compiled entry points ----------------------------------------------------------------

  def lower(self):
    with sharding.use(self.mesh, self.rules):
      return self._train_jit.lower(self._abstract_state, self._abstract_frozen,
                                   self.abstract_batch())

  def compile(self) -> float:
    """Compile the train step ahead of time; returns the seconds it took."""
    t0 = time.perf_counter()
    self._train_compiled = self.lower().compile()
    return time.perf_counter() - t0

  def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    if self._train_compiled is None:
      self.compile()
    return self._train_compiled(state, self.frozen, batch)

  def eval_step(self, params: dict, batch: dict, index: int) -> dict:
    if self._eval_compiled is None:
      with sharding.use(self.mesh, self.rules):
        self._eval_compiled = self._eval_jit.lower(
            jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         self._abstract_state["params"], self.params_sh),
            self._abstract_frozen, self.abstract_batch(),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated)).compile()
    return self._eval_compiled(params, self.frozen, batch, jnp.asarray(index, jnp.int32))

  def loss_and_grads(self, state: dict, batch: dict) -> tuple[jax.Array, dict]:
    """The step's loss and (accumulated, normalised) gradients, without updating: for tests."""
    with sharding.use(self.mesh, self.rules):
      return self._grads_jit(state, self.frozen, batch)
