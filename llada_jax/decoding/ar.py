"""Greedy autoregressive decoding for the causal Whisper-LLaMA baseline, with a KV cache.

The prefix (prompt + audio embeddings) is prefilled into the cache once; each later step feeds one
token. One jitted `lax.while_loop`, compiled once per (model structure, shapes, max_new_tokens);
the EOS id is a traced value.
"""

from __future__ import annotations

import functools
import logging

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax.layers import check_array
from llada_jax.transformer import KVCache, init_cache

log = logging.getLogger(__name__)


@flax.struct.dataclass
class _State:
  tokens: jax.Array  # [B, N] int32 new tokens (EOS-filled ahead)
  index: jax.Array  # [] int32 next token to produce
  done: jax.Array  # [B] bool: row has produced its EOS
  cache: KVCache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, mel, prompt_ids, eos_id, max_new_tokens: int):
  model = nnx.merge(graphdef, state)
  lm = model.lm
  prefix = model.prefix_embeds(prompt_ids, mel)
  b, p, _ = prefix.shape
  log.info("compiling greedy AR decode: batch %d, prefix %d, max_new_tokens %d", b, p,
           max_new_tokens)
  # The last new token is never fed back, so the cache needs one slot less than the output.
  cache = init_cache(lm.config, b, p + max_new_tokens - 1)
  logits, cache = lm(embeds=prefix, cache=cache, cache_index=0, logits_from=p - 1)
  first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
  tokens = jnp.full((b, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(first)

  def body(st: _State) -> _State:
    prev = jax.lax.dynamic_index_in_dim(st.tokens, st.index - 1, axis=1)  # [B, 1]
    logits, cache = lm(embeds=lm.embed(prev), cache=st.cache, cache_index=p + st.index - 1)
    nxt = jnp.where(st.done, eos_id, jnp.argmax(logits[:, -1], -1).astype(jnp.int32))
    tokens = jax.lax.dynamic_update_slice(st.tokens, nxt[:, None], (0, st.index))
    return _State(tokens=tokens, index=st.index + 1, done=st.done | (nxt == eos_id), cache=cache)

  st = _State(tokens=tokens, index=jnp.int32(1), done=first == eos_id, cache=cache)
  st = jax.lax.while_loop(lambda s: (s.index < max_new_tokens) & ~jnp.all(s.done), body, st)
  return st.tokens


def greedy(model, mel: jax.Array | None, prompt_ids: jax.Array, *, max_new_tokens: int,
           eos_id: int | None = None) -> jax.Array:
  """Whisper-LLaMA greedy decoding → new tokens int32 [B, max_new_tokens]; a row is EOS from its
  first EOS on. `eos_id` defaults to the LM config's; `mel=None` decodes from the prompt alone."""
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
  return _greedy(graphdef, state, None if mel is None else jnp.asarray(mel),
                 jnp.asarray(prompt_ids, jnp.int32),
                 jnp.int32(lm_cfg.eos_id if eos_id is None else eos_id),
                 max_new_tokens=max_new_tokens)
