"""Whisper-LLaDA: frozen Whisper encoder → window Q-Former → LLaDA (or LLaMA: Whisper-LLaMA).

The LM input is `[prompt embeds, audio embeds, response embeds]` (Diffusion-ASR splices the audio
right after the chat template's assistant header). LLaDA attends bidirectionally over all of it;
with `lm.causal=True` the same composite is the paper's Whisper-LLaMA baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.layers import check_array
from llada_jax.models.qformer import WindowQFormer
from llada_jax.models.transformer import KVCache, Transformer
from llada_jax.models.whisper import WhisperEncoder

# What the paper trains: Q-Former, its queries and the Linear projection, plus LoRA on the LM.
TRAINABLE = nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("projector")))


class WhisperLLaDA(nnx.Module):

  def __init__(self, config: WhisperLLaDAConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = WhisperEncoder(config.whisper, rngs)
    self.projector = WindowQFormer(config.qformer, rngs=rngs)
    self.lm = Transformer(config.lm, rngs=rngs)

  def num_audio_embeddings(self, mel_frames: int) -> int:
    return self.projector.num_embeddings(mel_frames // 2)

  def audio_embeds(self, mel: jax.Array) -> jax.Array:
    """mel [B, n_mels, T] → [B, (T/2 // window) * queries, D_lm]. The encoder is frozen."""
    return self.projector(jax.lax.stop_gradient(self.encoder(mel)))

  def prefix_embeds(self, prompt_ids: jax.Array, mel: jax.Array | None) -> jax.Array:
    """[prompt, audio] embeddings; `mel=None` gives the text-only (no audio) ablation."""
    check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
    parts = [self.lm.embed(prompt_ids)]
    if mel is not None:
      parts.append(self.audio_embeds(mel).astype(parts[0].dtype))
    return jnp.concatenate(parts, axis=1)

  def __call__(self, mel: jax.Array | None, prompt_ids: jax.Array, response_ids: jax.Array, *,
               response_mask: jax.Array | None = None, cache: KVCache | None = None,
               cache_index: int = 0):
    """Logits [B, P + A + R, V] over the whole spliced sequence.

    response_mask [B, R] bool marks real response tokens (False = key padding); prompt and audio
    are always attended.
    """
    check_array("response_ids", response_ids, ndim=2, dtypes=("integer",))
    prefix = self.prefix_embeds(prompt_ids, mel)
    embeds = jnp.concatenate([prefix, self.lm.embed(response_ids)], axis=1)
    key_mask = None
    if response_mask is not None:
      b = embeds.shape[0]
      key_mask = jnp.concatenate([jnp.ones((b, prefix.shape[1]), bool), response_mask], axis=1)
    return self.lm(embeds=embeds, key_mask=key_mask, cache=cache, cache_index=cache_index)
