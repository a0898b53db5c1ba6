"""The trained part of the authors' Whisper-LLaDA as a torch reference (tests only).

`TheirTrainedParts.module` has the parameter and buffer names of their `WhisperLLaDA` state dict
less the frozen Whisper and LLaDA, which is what their `save_checkpoint` keeps:
`speech_query_tokens`; `adapter`, a BERT LM-head model (embeddings, layers with self- and
cross-attention, the text FFN `intermediate`/`output` and the query FFN
`intermediate_query`/`output_query`, the MLM head `cls` tied to the word embeddings, the
`position_ids` buffer); `linear_proj`; PEFT's LoRA A/B under
`llada.base_model.model.model.transformer.blocks`. The Q-Former computes with transformers'
`Blip2QFormerModel` (cross_attention_frequency=1, the same BERT-with-cross-attention), whose
parameter objects the tree shares, so `load_state_dict` on the tree sets the reference's weights.

torch and transformers are imported inside: importing this module costs nothing.
"""

from __future__ import annotations

import re


def _put(root, name: str, value) -> None:
  """Register `value` (a Parameter, else a buffer) at dotted `name`, creating containers."""
  import torch

  *path, leaf = name.split(".")
  module = root
  for part in path:
    if part not in module._modules:
      module.add_module(part, torch.nn.Module())
    module = module._modules[part]
  if isinstance(value, torch.nn.Parameter):
    module.register_parameter(leaf, value)
  else:
    module.register_buffer(leaf, value)


def windows(frames, window: int):
  """SALMONN / Diffusion-ASR's window cutting: [B, T, C] → [B * (T // window), window, C]."""
  import torch.nn.functional as F

  b, _, c = frames.shape
  x = F.unfold(frames.transpose(1, 2).unsqueeze(2), kernel_size=(1, window), stride=(1, window))
  x = x.view(b, -1, window, x.shape[-1]).permute(0, 3, 2, 1)
  return x.reshape(-1, window, c)


class TheirTrainedParts:
  """Their trained tensors, by their names, with the Q-Former and LoRA computations."""

  def __init__(self, *, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64,
               width: int = 32, queries: int = 4, out_dim: int = 32, lm_layers: int = 2,
               lm_d: int = 32, lm_kv: int = 16, rank: int = 8, alpha: float = 32.0,
               vocab: int = 10, positions: int = 10, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    self.rank, self.alpha = rank, alpha
    self.qformer = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, encoder_hidden_size=width, cross_attention_frequency=1,
        layer_norm_eps=1e-12)).eval()
    P = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * 0.5)  # noqa: E731
    root = self.module = torch.nn.Module()
    _put(root, "speech_query_tokens", P(1, queries, hidden))
    for i in range(lm_layers):  # PEFT's LoRA: A [r, in], B [out, r]
      for proj, out in (("q_proj", lm_d), ("k_proj", lm_kv), ("v_proj", lm_kv)):
        base = f"llada.base_model.model.model.transformer.blocks.{i}.{proj}"
        _put(root, f"{base}.lora_A.default.weight", P(rank, lm_d))
        _put(root, f"{base}.lora_B.default.weight", P(out, rank))
    shared = dict(self.qformer.named_parameters())
    words = P(vocab, hidden)
    bert = "adapter.bert"
    _put(root, f"{bert}.embeddings.word_embeddings.weight", words)
    _put(root, f"{bert}.embeddings.position_embeddings.weight", P(positions, hidden))
    _put(root, f"{bert}.embeddings.LayerNorm.weight", shared["layernorm.weight"])
    _put(root, f"{bert}.embeddings.LayerNorm.bias", shared["layernorm.bias"])
    _put(root, f"{bert}.embeddings.position_ids", torch.arange(positions).expand((1, -1)))
    for i in range(layers):
      for name, p in shared.items():
        if name.startswith(f"encoder.layer.{i}."):
          ours = re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", name)
          _put(root, f"{bert}.{ours}", p)
        if name == f"encoder.layer.{i}.crossattention.output.LayerNorm.bias":
          # the text-side FFN sits between the cross-attention and the query FFN in their layer
          layer = f"{bert}.encoder.layer.{i}"
          for part, shape in (("intermediate.dense", (intermediate, hidden)),
                              ("output.dense", (hidden, intermediate))):
            _put(root, f"{layer}.{part}.weight", P(*shape))
            _put(root, f"{layer}.{part}.bias", P(shape[0]))
          _put(root, f"{layer}.output.LayerNorm.weight", P(hidden))
          _put(root, f"{layer}.output.LayerNorm.bias", P(hidden))
    bias = P(vocab)
    head = "adapter.cls.predictions"
    _put(root, f"{head}.bias", bias)
    _put(root, f"{head}.transform.dense.weight", P(hidden, hidden))
    _put(root, f"{head}.transform.dense.bias", P(hidden))
    _put(root, f"{head}.transform.LayerNorm.weight", P(hidden))
    _put(root, f"{head}.transform.LayerNorm.bias", P(hidden))
    _put(root, f"{head}.decoder.weight", words)  # tied, as BertLMHeadModel ties its decoder
    _put(root, f"{head}.decoder.bias", bias)
    _put(root, "linear_proj.weight", P(out_dim, hidden))
    _put(root, "linear_proj.bias", P(out_dim))
    with torch.no_grad():  # BLIP-2's std-0.02 init keeps the Q-Former's activations tame
      for name, p in shared.items():
        if "LayerNorm" in name or "layernorm" in name:
          p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.1, 0.1)

  @property
  def unused(self) -> list[str]:
    """Names in their checkpoint that their model never applies to query tokens."""
    pattern = re.compile(r"^adapter\.(cls\.|bert\.embeddings\.(word|position)|"
                         r"bert\.encoder\.layer\.\d+\.(intermediate|output)\.)")
    return [n for n in self.module.state_dict() if pattern.match(n)]

  def audio_features(self, frames, window: int):
    """Their `_extract_audio_features` after the Whisper encoder: [B, T, width] → [B, N*Q, D]."""
    import torch

    b = frames.shape[0]
    x = windows(frames, window)
    sd = self.module.state_dict()
    q = sd["speech_query_tokens"].expand(x.shape[0], -1, -1)
    with torch.no_grad():
      out = self.qformer(query_embeds=q, encoder_hidden_states=x,
                         encoder_attention_mask=torch.ones(x.shape[:-1], dtype=torch.long))
      out = torch.nn.functional.linear(out.last_hidden_state, sd["linear_proj.weight"],
                                       sd["linear_proj.bias"])
    return out.view(b, -1, out.shape[-1])

  def lora(self, layer: int, proj: str, x):
    """PEFT's LoRA term at eval: lora_B(lora_A(x)) * scaling, scaling = lora_alpha / r."""
    sd = self.module.state_dict()
    base = f"llada.base_model.model.model.transformer.blocks.{layer}.{proj}"
    a, b = sd[f"{base}.lora_A.default.weight"], sd[f"{base}.lora_B.default.weight"]
    return x @ a.T.to(x.dtype) @ b.T.to(x.dtype) * (self.alpha / self.rank)
