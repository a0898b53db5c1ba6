"""Window Q-Former vs transformers' Blip2QFormerModel + torch F.unfold, written as SALMONN does
it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from flax import nnx

from llada_jax.convert.mapping import BLIP2_QFORMER, DictSource, Mapping, Rule, load_into
from llada_jax.models.config import QFormerConfig
from llada_jax.models.qformer import WindowQFormer, cut_windows


def salmonn_windows(frames: torch.Tensor, window: int) -> torch.Tensor:
  """SALMONN / Diffusion-ASR's window cutting, verbatim in structure."""
  b, t, c = frames.shape
  x = frames.transpose(1, 2).unsqueeze(2)  # B, C, 1, T
  x = F.unfold(x, kernel_size=(1, window), dilation=1, padding=0, stride=(1, window))
  n = x.shape[-1]
  x = x.view(b, -1, window, n).permute(0, 3, 2, 1)  # B, N, W, C
  return x.reshape(-1, window, c)


def test_cut_windows_matches_unfold():
  frames = torch.randn(2, 1500, 6)
  want = salmonn_windows(frames, 17).numpy()
  got = np.asarray(cut_windows(jnp.asarray(frames.numpy()), 17))
  assert got.shape == (2 * 88, 17, 6)  # 30 s → 88 windows, the last 4 frames dropped
  np.testing.assert_array_equal(got, want)


def test_paper_window_geometry():
  cfg = QFormerConfig.paper()
  assert cfg.window_frames == 17
  assert cfg.num_windows(1500) * cfg.num_queries == 352


@pytest.mark.parametrize("frames", [1500, 100])
def test_qformer_matches_blip2(frames):
  cfg = QFormerConfig.tiny_test(encoder_width=24, out_dim=40)
  torch.manual_seed(0)
  hf_cfg = transformers.Blip2QFormerConfig(
      hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
      encoder_hidden_size=cfg.encoder_width, cross_attention_frequency=1,
      layer_norm_eps=cfg.layer_norm_eps)
  bert = transformers.Blip2QFormerModel(hf_cfg).eval()
  with torch.no_grad():  # LayerNorms start at (1, 0); randomise so the test sees them
    for name, p in bert.named_parameters():
      if "LayerNorm" in name or "layernorm" in name:
        p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.1, 0.1)
  queries = torch.randn(1, cfg.num_queries, cfg.hidden_size) * 0.02
  proj = torch.nn.Linear(cfg.hidden_size, cfg.out_dim)
  x = torch.randn(2, frames, cfg.encoder_width)

  with torch.no_grad():
    windows = salmonn_windows(x, cfg.window_frames)
    out = bert(query_embeds=queries.expand(windows.shape[0], -1, -1),
               encoder_hidden_states=windows,
               encoder_attention_mask=torch.ones(windows.shape[:-1], dtype=torch.long))
    want = proj(out.last_hidden_state).view(2, -1, cfg.out_dim).numpy()

  model = WindowQFormer(cfg, rngs=nnx.Rngs(0))
  tensors = dict(bert.state_dict())
  tensors.update({"query_tokens": queries, "proj.weight": proj.weight, "proj.bias": proj.bias})
  mapping = BLIP2_QFORMER + Mapping(rules=(
      Rule("query_tokens", "query_tokens"), Rule("proj.weight", "proj.kernel", "transpose"),
      Rule("proj.bias", "proj.bias")))
  load_into(model, DictSource(tensors), mapping, what="blip2 qformer")
  got = np.asarray(model(jnp.asarray(x.numpy())))
  assert got.shape == (2, (frames // 17) * cfg.num_queries, cfg.out_dim)
  assert np.abs(got - want).max() <= 1e-4


def test_bad_input_names_shape():
  model = WindowQFormer(QFormerConfig.tiny_test(encoder_width=24, out_dim=40), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"encoder frames: expected last dim 24"):
    model(jnp.zeros((1, 34, 25)))
  with pytest.raises(ValueError, match=r"shorter than one window"):
    model(jnp.zeros((1, 10, 24)))


def test_dropout_acts_in_train_mode_only_and_leaves_init_alone():
  """Diffusion-ASR's Q-Former is bert-base with dropout 0.1, active under `model.train()`."""
  assert QFormerConfig.paper().dropout == 0.1
  cfg = QFormerConfig.tiny_test()
  frames = jnp.asarray(np.random.default_rng(0).standard_normal((2, 51, 64)).astype(np.float32))
  plain = WindowQFormer(cfg, rngs=nnx.Rngs(0))
  dropped = WindowQFormer(QFormerConfig.tiny_test(dropout=0.1), rngs=nnx.Rngs(0))
  plain_weights = nnx.state(plain, nnx.Param)
  # dropout takes no draw from the parameters' stream: the same weights either way
  for a, b in zip(jax.tree.leaves(plain_weights), jax.tree.leaves(nnx.state(dropped, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(dropped(frames)), np.asarray(plain(frames)), atol=1e-6)
  dropped.train()
  one, two = np.asarray(dropped(frames)), np.asarray(dropped(frames))
  assert not np.allclose(one, np.asarray(plain(frames)), atol=1e-3)
  assert not np.allclose(one, two, atol=1e-3)  # a fresh mask each call
