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

  def prefix_embeds(self, prompt_ids: jax.Array, mel: jax.Array | None = None, *,
                    encoded: jax.Array | None = None) -> jax.Array:
    """[prompt, audio] embeddings [B, P + A, D]: the audio from `mel` [B, n_mels, T] through the
    frozen encoder, or from `encoded` [B, T/2, d_whisper] (the encoder's cached outputs) through
    the projector alone; neither gives the text-only (no audio) ablation."""
    check_array("prompt_ids", prompt_ids, ndim=2, dtypes=("integer",))
    if mel is not None and encoded is not None:
      raise ValueError("prefix_embeds: pass mel or encoded (the encoder's outputs), not both")
    parts = [self.lm.embed(prompt_ids)]
    if mel is not None:
      parts.append(self.audio_embeds(mel).astype(parts[0].dtype))
    elif encoded is not None:
      parts.append(self.projector(encoded).astype(parts[0].dtype))
    return jnp.concatenate(parts, axis=1)

  def forward(self, prefix: jax.Array | None, response_ids: jax.Array, *,
              prefix_mask: jax.Array | None = None, response_mask: jax.Array | None = None,
              cache: KVCache | None = None, cache_index: jax.Array | int = 0,
              update_cache: bool = True, rows: str = "response"
              ) -> tuple[jax.Array, KVCache | None]:
    """The LM over `[prefix | response]` (prefix from `prefix_embeds`) → (float32 logits at
    `rows`, cache | None): `Transformer.forward`, which training and decoding run."""
    return self.lm.forward(prefix, response_ids, prefix_mask=prefix_mask,
                           response_mask=response_mask, cache=cache, cache_index=cache_index,
                           update_cache=update_cache, rows=rows)

  def __call__(self, mel: jax.Array | None, prompt_ids: jax.Array, response_ids: jax.Array, *,
               response_mask: jax.Array | None = None) -> jax.Array:
    """Logits [B, P + A + R, V] over the whole spliced sequence.

    response_mask [B, R] bool marks real response tokens (False = key padding); prompt and audio
    are always attended.
    """
    logits, _ = self.forward(self.prefix_embeds(prompt_ids, mel), response_ids,
                             response_mask=response_mask, rows="all")
    return logits
