"""Whisper encoder/decoder parity with transformers' PyTorch Whisper on tiny random models
(fp32)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from llada_jax.convert.mapping import HF_WHISPER, DictSource, load_into
from llada_jax.decoding import greedy_loop, whisper_greedy
from llada_jax.models import stacked, whisper
from llada_jax.models.config import WhisperConfig
from llada_jax.parallel import sharding

TOL = 1e-4
SOURCE = 100  # encoder positions of the test models: 200 mel frames keep HF's fixed length cheap


def ours_config(n_mels: int = 80, source: int = SOURCE) -> WhisperConfig:
  return WhisperConfig.tiny_test(n_mels=n_mels, max_source_positions=source)


def hf_config(cfg: WhisperConfig) -> transformers.WhisperConfig:
  return transformers.WhisperConfig(
      vocab_size=cfg.vocab_size, num_mel_bins=cfg.n_mels, d_model=cfg.d_model,
      encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
      encoder_attention_heads=cfg.encoder_heads, decoder_attention_heads=cfg.decoder_heads,
      encoder_ffn_dim=cfg.encoder_ffn_dim, decoder_ffn_dim=cfg.decoder_ffn_dim,
      max_source_positions=cfg.max_source_positions, max_target_positions=cfg.max_target_positions,
      pad_token_id=0, bos_token_id=cfg.decoder_start_token_id, eos_token_id=cfg.eos_token_id,
      decoder_start_token_id=cfg.decoder_start_token_id, attn_implementation="eager")


def hf_model(cfg: WhisperConfig, seed: int = 0) -> transformers.WhisperForConditionalGeneration:
  torch.manual_seed(seed)
  model = transformers.WhisperForConditionalGeneration(hf_config(cfg)).eval()
  # HF initialises biases to 0 and norms to 1: jitter them so a mis-mapped bias or gain shows. Its
  # std-0.02 matrices make greedy decoding repeat one token whatever the audio; larger ones do not.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "embed_positions" not in name or "decoder" in name:
        p.add_(torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.05))
  return model


def to_numpy(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().float().numpy()


def pair(cfg: WhisperConfig, seed: int = 0):
  ref = hf_model(cfg, seed)
  ours = whisper.Whisper(cfg, rngs=nnx.Rngs(0))
  load_into(ours, DictSource(ref.state_dict()), HF_WHISPER, what="torch whisper")
  return ours, ref


def random_mel(batch: int, n_mels: int, frames: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, n_mels, frames)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
  return pair(ours_config())


@pytest.mark.parametrize("n_mels", [80, 128])
def test_encoder_matches_transformers(n_mels, tiny):
  cfg = ours_config(n_mels)
  ours, ref = tiny if n_mels == 80 else pair(cfg)
  mel = random_mel(2, n_mels, cfg.max_mel_frames)
  with torch.no_grad():
    want = to_numpy(ref.model.encoder(torch.from_numpy(mel)).last_hidden_state)
  got = np.asarray(ours.encode(jnp.asarray(mel)))
  assert got.shape == (2, cfg.max_source_positions, cfg.d_model)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_short_input_matches_truncated_table(tiny):
  ours, ref = tiny
  frames = 120
  short_cfg = hf_config(ours_config(source=frames // 2))
  torch.manual_seed(0)
  short = transformers.WhisperModel(short_cfg).eval()
  state = ref.model.state_dict()
  state["encoder.embed_positions.weight"] = state["encoder.embed_positions.weight"][: frames // 2]
  short.load_state_dict(state)
  mel = random_mel(2, 80, frames, seed=1)
  with torch.no_grad():
    want = to_numpy(short.encoder(torch.from_numpy(mel)).last_hidden_state)
  got = np.asarray(ours.encode(jnp.asarray(mel)))
  assert got.shape == (2, frames // 2, ours.config.d_model)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_logits_match_transformers(tiny):
  ours, ref = tiny
  mel = random_mel(2, 80, ours.config.max_mel_frames, seed=2)
  ids = np.random.default_rng(3).integers(0, ours.config.vocab_size, (2, 7))
  with torch.no_grad():
    want = to_numpy(ref(input_features=torch.from_numpy(mel),
                        decoder_input_ids=torch.from_numpy(ids)).logits)
  got = ours(jnp.asarray(mel), jnp.asarray(ids, jnp.int32))
  assert got.dtype == jnp.float32 and got.shape == (2, 7, ours.config.vocab_size)
  np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)


def test_cached_steps_match_full_forward(tiny):
  ours, _ = tiny
  mel = jnp.asarray(random_mel(2, 80, ours.config.max_mel_frames, seed=4))
  ids = jnp.asarray(np.random.default_rng(5).integers(0, ours.config.vocab_size, (2, 6)), jnp.int32)
  full = ours(mel, ids)
  cache = ours.init_cache(2, 8, ours.encode(mel))  # longer than used: the tail must stay masked
  step = nnx.jit(lambda m, i, c, n: m.decode_step(i, c, n))
  # A 2-token prefill, then one token at a time at a traced index (as inside the while_loop).
  logits, cache = ours.decode_step(ids[:, :2], cache, 0)
  pieces = [logits]
  for t in range(2, 6):
    logits, cache = step(ours, ids[:, t:t + 1], cache, jnp.int32(t))
    pieces.append(logits)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), np.asarray(full), atol=TOL,
                             rtol=0)


def torch_greedy(ref, mel: np.ndarray, prompt: np.ndarray, steps: int, eos: int) -> np.ndarray:
  ids = torch.from_numpy(prompt)
  done = torch.zeros(len(prompt), dtype=torch.bool)
  out = []
  with torch.no_grad():
    enc = ref.model.encoder(torch.from_numpy(mel)).last_hidden_state
    for _ in range(steps):
      logits = ref(encoder_outputs=(enc,), decoder_input_ids=ids).logits[:, -1]
      nxt = torch.where(done, eos, logits.argmax(-1))
      done |= nxt == eos
      out.append(nxt)
      ids = torch.cat([ids, nxt[:, None]], 1)
  return torch.stack(out, 1).numpy()


def test_greedy_matches_torch_and_stops_at_eos(tiny, caplog):
  ours, ref = tiny
  mel = random_mel(2, 80, ours.config.max_mel_frames, seed=6)
  prompt = np.array([[1, 5], [1, 5]], np.int64)
  steps = 8
  free = torch_greedy(ref, mel, prompt, steps, eos=-1)
  assert (free[0] != free[1]).any(), "rows should differ for different mels"
  # An EOS the model really emits mid-sequence in row 0, so stopping and EOS padding are exercised.
  eos = int(free[0, 3])
  want = torch_greedy(ref, mel, prompt, steps, eos=eos)
  with caplog.at_level(logging.INFO, logger="llada_jax.decoding.greedy_loop"):
    got = whisper_greedy(ours, jnp.asarray(mel), jnp.asarray(prompt, jnp.int32), steps, eos)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (np.asarray(got)[0, 3:] == eos).all()
    whisper_greedy(ours, jnp.asarray(mel), jnp.asarray(prompt, jnp.int32), steps, eos)
  assert greedy_loop._whisper_greedy._cache_size() == 1, "same shapes must not recompile"
  logged = [r.getMessage() for r in caplog.records if "compiling Whisper greedy" in r.getMessage()]
  assert len(logged) == 1 and "batch 2, prompt 2, mel frames 200" in logged[0]


def test_bad_inputs_raise(tiny):
  ours, _ = tiny
  frames = ours.config.max_mel_frames
  cases = [
      (np.zeros((2, 64, frames), np.float32), r"mel: expected 80 mel bins.*\(2, 64, 200\)"),
      (np.zeros((80, frames), np.float32), r"mel: expected a rank-3 array.*\(80, 200\)"),
      (np.zeros((2, 80, frames), np.int32), r"mel: expected dtype floating.*\(2, 80, 200\)"),
      (np.zeros((2, 80, 101), np.float32), r"mel: expected an even frame count.*\(2, 80, 101\)"),
      (np.zeros((2, 80, frames + 2), np.float32), r"mel:.*\(2, 80, 202\)"),
  ]
  for mel, match in cases:
    with pytest.raises(ValueError, match=match):
      ours.encode(jnp.asarray(mel))
  mel = jnp.zeros((1, 80, 20), jnp.float32)
  too_long = jnp.zeros((1, ours.config.max_target_positions + 1), jnp.int32)
  with pytest.raises(ValueError, match=r"decoder_ids: .*max_target_positions.*\(1, 65\)"):
    ours(mel, too_long)
  with pytest.raises(ValueError, match=r"decoder_ids: expected dtype integer.*\(1, 3\)"):
    ours(mel, jnp.zeros((1, 3), jnp.float32))
  cache = ours.init_cache(1, 4, ours.encode(mel))
  with pytest.raises(ValueError, match=r"decoder_ids: .*cache length 4 \(shape \(1, 2\)\)"):
    ours.decode_step(jnp.zeros((1, 2), jnp.int32), cache, 3)
  with pytest.raises(ValueError, match=r"prompt_ids: .*\(1, 60\)"):
    whisper_greedy(ours, mel, jnp.zeros((1, 60), jnp.int32), 10, 2)


def test_weights_carry_logical_axes(tiny):
  ours, _ = tiny
  for path, var in nnx.to_flat_state(nnx.state(ours)):
    axes = sharding.logical_axes(var)
    assert axes is not None and len(axes) == var.ndim, f"{path}: axes {axes}, shape {var.shape}"
    assert set(axes) - {None} <= set(sharding.WEIGHT_AXES), f"{path}: {axes}"
  # The sinusoid table loads from checkpoints but is not a trainable parameter.
  params = {path for path, _ in nnx.to_flat_state(nnx.state(ours, nnx.Param))}
  assert ("encoder", "embed_positions", "embedding") not in params
  assert ("decoder", "embed_positions", "embedding") in params


# ------------------------------------------------------------------------------------------------
# whisper_greedy's additions used by the first pass: suppression, probabilities, row-group encoding


def test_greedy_suppression_probabilities_and_row_groups():
  cfg = WhisperConfig.tiny_test(max_source_positions=50)
  model = whisper.Whisper(cfg, rngs=nnx.Rngs(0))
  for _, var in nnx.iter_graph(model):  # larger weights: std-0.02 init repeats one token
    if isinstance(var, nnx.Param) and len(stacked.layer_shape(var)) > 1:  # not norms / biases
      var[...] = var[...] * 8.0
  rng = np.random.default_rng(0)
  mel = jnp.asarray(rng.standard_normal((4, cfg.n_mels, 100)).astype(np.float32))
  prompt = jnp.asarray([[1, 3]] * 4, jnp.int32)
  eos, n = cfg.eos_token_id, 6
  plain = np.asarray(whisper_greedy(model, mel, prompt, n, eos))
  tokens, probs = whisper_greedy(model, mel, prompt, n, eos, return_probs=True, encoder_rows=1)
  np.testing.assert_array_equal(np.asarray(tokens), plain)
  # Each probability is the softmax of the full (uncached) forward at that position.
  full = model(mel, jnp.concatenate([prompt, jnp.asarray(plain[:, :-1])], axis=1))
  softmax = np.asarray(jax.nn.softmax(full[:, 1:], -1))
  want = np.take_along_axis(softmax, plain[..., None], -1)[..., 0]
  live = np.cumsum(plain == eos, axis=1) - (plain == eos) == 0  # up to and including the first EOS
  np.testing.assert_allclose(np.asarray(probs)[live], want[live], rtol=1e-4, atol=1e-6)
  assert (np.asarray(probs)[~live] == 1.0).all()
  # Suppressed ids never come out; begin-suppressed ids only not first.
  banned = sorted({int(t) for t in plain[:, 1:3].ravel()} - {eos})
  first = sorted({int(t) for t in plain[:, 0]} - {eos} - set(banned))
  out = np.asarray(whisper_greedy(model, mel, prompt, n, eos, suppress_ids=banned,
                                         begin_suppress_ids=first))
  assert not np.isin(out, banned).any() and not np.isin(out[:, 0], first).any()
  assert first and np.isin(plain[:, 0], first).any()  # the test bans something greedy chose
