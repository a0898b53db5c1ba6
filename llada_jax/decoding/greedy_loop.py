"""KV-cached greedy decoding: one `lax.while_loop` for Whisper and for the causal Whisper-LLaMA
baseline.

The prefix is prefilled into the model's KV cache once; each later step feeds back the last new
token. A row is EOS from its first EOS on, and the loop stops when every row has one. The cache
needs one slot less than prefix + output: the last new token is never fed back.

(This module is not called `greedy.py`: `llada_jax.decoding.greedy` is the function, and a
submodule of that name would be shadowed by it.)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing as tp

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.models.layers import check_array
from llada_jax.models.transformer import init_cache
from llada_jax.models.whisper import Whisper, encode_in_groups

log = logging.getLogger(__name__)

# (prev [B, 1] int32, cache, prev's position among the new tokens) → (logits [B, 1, V], cache)
StepFn = tp.Callable[[jax.Array, tp.Any, jax.Array], tuple[jax.Array, tp.Any]]


@flax.struct.dataclass
class _State:
  tokens: jax.Array  # [B, N] int32 new tokens (EOS-filled ahead)
  probs: jax.Array | None  # [B, N] float32 each chosen token's probability (1.0 after EOS)
  index: jax.Array  # [] int32 next token to produce
  done: jax.Array  # [B] bool: the row has produced its EOS
  cache: tp.Any  # the model's KV cache


def _pick(logits: jax.Array, bias: jax.Array | None, probs: bool):
  """Logits [B, V] → (greedy token [B] int32, its probability [B] or None).

  `bias`: Whisper's token suppression as an additive 0 / -inf logit bias. The probability is the
  softmax over the biased logits: the distribution greedy decoding actually chose from.
  """
  logits = logits if bias is None else logits + bias
  token = jnp.argmax(logits, -1).astype(jnp.int32)
  if not probs:
    return token, None
  return token, jnp.exp(jnp.max(logits, -1) - jax.nn.logsumexp(logits, -1))


def _loop(step: StepFn, logits: jax.Array, cache, *, max_new_tokens: int, eos_id, probs: bool,
          bias: jax.Array | None = None, first_bias: jax.Array | None = None) -> _State:
  """Greedy tokens from the prefill's logits [B, T, V] (the last position predicts the first new
  token) and its cache. `first_bias` replaces `bias` for the first new token."""
  first, first_p = _pick(logits[:, -1], first_bias if first_bias is not None else bias, probs)
  b = first.shape[0]
  st = _State(tokens=jnp.full((b, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(first),
              probs=None, index=jnp.int32(1), done=first == eos_id, cache=cache)
  if probs:
    st = st.replace(probs=jnp.ones((b, max_new_tokens), jnp.float32).at[:, 0].set(first_p))

  def body(st: _State) -> _State:
    prev = jax.lax.dynamic_index_in_dim(st.tokens, st.index - 1, axis=1)  # [B, 1]
    logits, cache = step(prev, st.cache, st.index - 1)
    token, p = _pick(logits[:, -1], bias, probs)
    nxt = jnp.where(st.done, eos_id, token)
    tokens = jax.lax.dynamic_update_slice(st.tokens, nxt[:, None], (0, st.index))
    new_probs = None
    if probs:
      new_probs = jax.lax.dynamic_update_slice(st.probs, jnp.where(st.done, 1.0, p)[:, None],
                                               (0, st.index))
    return _State(tokens=tokens, probs=new_probs, index=st.index + 1,
                  done=st.done | (nxt == eos_id), cache=cache)

  return jax.lax.while_loop(lambda s: (s.index < max_new_tokens) & ~jnp.all(s.done), body, st)


# --- Whisper-LLaMA (causal LM over [prompt, audio] embeddings) -----------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _lm_greedy(graphdef, state, mel, prompt_ids, eos_id, max_new_tokens: int):
  model = nnx.merge(graphdef, state)
  lm = model.lm
  prefix = model.prefix_embeds(prompt_ids, mel)
  b, p, _ = prefix.shape
  log.info("compiling greedy AR decode: batch %d, prefix %d, max_new_tokens %d", b, p,
           max_new_tokens)
  cache = init_cache(lm.config, b, p + max_new_tokens - 1)
  h, cache = lm.hidden(embeds=prefix, cache=cache, cache_index=0)
  logits = lm.logits(h[:, p - 1:])  # the prefix's last row predicts the first new token

  def step(prev, cache, pos):
    return lm.forward(None, prev, cache=cache, cache_index=p + pos)

  return _loop(step, logits, cache, max_new_tokens=max_new_tokens, eos_id=eos_id,
               probs=False).tokens


@dataclasses.dataclass(frozen=True)
class GreedySettings:
  """Greedy AR decoding with a KV cache (the causal Whisper-LLaMA baseline)."""

  # Response tokens; None (a Transcriber's settings only): the checkpoint's response length.
  max_new_tokens: int | None = None

  def __post_init__(self):
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"GreedySettings.max_new_tokens={self.max_new_tokens}: expected ≥ 1")


def greedy(model, mel: jax.Array | None, prompt_ids: jax.Array, *, max_new_tokens: int,
           eos_id: int | None = None) -> jax.Array:
  """Whisper-LLaMA greedy decoding → new tokens int32 [B, max_new_tokens]; a row is EOS from its
  first EOS on. `eos_id` defaults to the LM config's; `mel=None` decodes from the prompt alone.

  Compiled once per (model structure, shapes, max_new_tokens); the EOS id is a traced value.
  """
  lm_cfg = model.config.lm
  if not lm_cfg.causal:
    raise ValueError("greedy: the LM is bidirectional (causal=False); cached AR decoding needs "
                     "the causal Whisper-LLaMA baseline")
  check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
  if mel is not None:
    check_array("mel", mel, ndim=3)
  if max_new_tokens < 1:
    raise ValueError(f"greedy: max_new_tokens must be ≥ 1, got {max_new_tokens}")
  graphdef, state = nnx.split(model)
  return _lm_greedy(graphdef, state, None if mel is None else jnp.asarray(mel),
                    jnp.asarray(prompt_ids, jnp.int32),
                    jnp.int32(lm_cfg.eos_id if eos_id is None else eos_id),
                    max_new_tokens=max_new_tokens)


# --- Whisper (encoder–decoder) -------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "with_probs",
                                             "encoder_rows"))
def _whisper_greedy(graphdef, state, mel, prompt_ids, max_new_tokens: int, eos_id: int,
                    bias=None, first_bias=None, with_probs: bool = False,
                    encoder_rows: int | None = None):
  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompt_ids.shape
  log.info("compiling Whisper greedy decode: batch %d, prompt %d, mel frames %d, "
           "max_new_tokens %d", batch, prompt_len, mel.shape[-1], max_new_tokens)
  cache = model.init_cache(batch, prompt_len + max_new_tokens - 1,
                           encode_in_groups(model, mel, encoder_rows))
  logits, cache = model.decode_step(prompt_ids, cache, 0)

  def step(prev, cache, pos):
    return model.decode_step(prev, cache, prompt_len + pos)

  # The probabilities are carried even when not returned: the compiled loop is the one it was
  # before the loops were shared, whatever `with_probs`.
  st = _loop(step, logits, cache, max_new_tokens=max_new_tokens, eos_id=eos_id, probs=True,
             bias=bias, first_bias=first_bias)
  return (st.tokens, st.probs) if with_probs else st.tokens


def suppress_bias(vocab_size: int, ids) -> np.ndarray | None:
  """Additive logit bias float32 [vocab]: -inf at `ids` (Whisper's SuppressTokens), else 0."""
  ids = [int(i) for i in (ids or ()) if 0 <= int(i) < vocab_size]
  if not ids:
    return None
  bias = np.zeros((vocab_size,), np.float32)
  bias[ids] = -np.inf
  return bias


def whisper_greedy(model: Whisper, mel: jax.Array, prompt_ids: jax.Array, max_new_tokens: int,
                   eos_id: int, *, suppress_ids=None, begin_suppress_ids=None,
                   return_probs: bool = False, encoder_rows: int | None = None):
  """Batched Whisper greedy decoding → new tokens [B, max_new_tokens]; a row is EOS from its first
  EOS on.

  `suppress_ids` are never emitted; `begin_suppress_ids` additionally not as the first new token
  (Whisper's SuppressTokens / SuppressBlank: the CTranslate2 config's `suppress_ids` and
  `suppress_ids_begin`). `return_probs=True` returns (tokens, probs float32 [B, max_new_tokens]):
  each greedy token's softmax probability (1.0 after the row's EOS). `encoder_rows`: encode that
  many rows at a time (`whisper.encode_in_groups`; 1 is fastest on CPU).

  Compiled once per (model structure, shapes, max_new_tokens, eos_id).
  """
  cfg = model.config
  check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
  if max_new_tokens < 1:
    raise ValueError(f"whisper_greedy: max_new_tokens must be ≥ 1, got {max_new_tokens}")
  if prompt_ids.shape[1] + max_new_tokens - 1 > cfg.max_target_positions:
    raise ValueError(f"prompt_ids: {prompt_ids.shape[1]} prompt + {max_new_tokens} new tokens "
                     f"exceed max_target_positions {cfg.max_target_positions} "
                     f"(shape {tuple(prompt_ids.shape)})")
  bias = suppress_bias(cfg.vocab_size, suppress_ids)
  first_bias = suppress_bias(cfg.vocab_size,
                             list(suppress_ids or ()) + list(begin_suppress_ids or ()))
  if first_bias is not None and bias is None:
    bias = np.zeros_like(first_bias)
  graphdef, state = nnx.split(model)
  kw = {}
  if bias is not None:  # no bias: the exact graph (and cache entry) of plain greedy decoding
    kw = dict(bias=jnp.asarray(bias), first_bias=jnp.asarray(first_bias))
  if return_probs:
    kw["with_probs"] = True
  if encoder_rows is not None:
    kw["encoder_rows"] = int(encoder_rows)
  return _whisper_greedy(graphdef, state, jnp.asarray(mel), jnp.asarray(prompt_ids, jnp.int32),
                         max_new_tokens=max_new_tokens, eos_id=eos_id, **kw)
