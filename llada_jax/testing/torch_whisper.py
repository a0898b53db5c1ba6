"""transformers' PyTorch Whisper as a greedy reference for the JAX port (tests and benchmarks only).

torch and transformers are imported inside the methods: importing this module costs nothing, and
a test file that holds it still collects where torch is missing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.models.features import HOP


class TorchWhisper:
  """transformers' Whisper with the weights of a converted checkpoint: greedy decoding from
  [<|startoftranscript|>, <|notimestamps|>] with the checkpoint's token suppression."""

  def __init__(self, ckpt: Path, torch_dir: Path):
    """`ckpt`: the converted checkpoint (tokenizer, source.json); `torch_dir`: its export."""
    import transformers
    from tokenizers import Tokenizer

    ckpt = Path(ckpt)
    self.model = transformers.WhisperForConditionalGeneration.from_pretrained(torch_dir).eval()
    self.fe = transformers.WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins)
    self.frames = 2 * self.model.config.max_source_positions  # 3000: Whisper's 30 s
    self.tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    cfg = json.loads((ckpt / "source.json").read_text()).get("config", {})
    self.suppress = list(cfg.get("suppress_tokens") or [])
    self.begin = list(cfg.get("begin_suppress_tokens") or [])
    self.prompt = [self.tokenizer.token_to_id(t)
                   for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    self.eos = self.tokenizer.token_to_id("<|endoftext|>")
    self._short: dict[int, object] = {}

  def with_frames(self, frames: int | None = None):
    """The same weights with a shorter encoder input: transformers insists on max_source_positions
    × 2 mel frames, so the reference for s·100 frames is a copy configured for them."""
    import transformers

    if frames is None or frames == self.frames:
      return self.model
    if frames not in self._short:
      cfg = copy.deepcopy(self.model.config)
      cfg.max_source_positions = frames // 2
      model = transformers.WhisperForConditionalGeneration(cfg).eval()
      state = self.model.state_dict()
      key = "model.encoder.embed_positions.weight"
      state[key] = state[key][: frames // 2]
      model.load_state_dict(state)
      self._short[frames] = model
    return self._short[frames]

  def features(self, audios: list[np.ndarray], frames: int | None = None):
    """Log-mel input padded or cut to `frames` (default 30 s), as a torch tensor."""
    frames = frames or self.frames
    feats = self.fe(audios, sampling_rate=SAMPLE_RATE, max_length=frames * HOP,
                    padding="max_length", truncation=True, return_tensors="pt").input_features
    assert feats.shape[-1] == frames, feats.shape
    return feats

  def text(self, rows) -> list[str]:
    """Token rows (no prompt) → transcripts, each cut at its first EOS."""
    out = []
    for row in np.asarray(rows):
      n = int(np.argmax(row == self.eos)) if (row == self.eos).any() else row.shape[0]
      out.append(self.tokenizer.decode([int(t) for t in row[:n]], skip_special_tokens=True).strip())
    return out

  def loop(self, audios: list[np.ndarray], frames: int | None = None,
           max_new: int = 224) -> list[str]:
    """Encoder once, then a KV-cached greedy loop of forward calls: the lean way to drive it."""
    import torch

    model = self.with_frames(frames)
    feats = self.features(audios, frames)
    with torch.inference_mode():
      enc = model.model.encoder(feats).last_hidden_state
      ids = torch.tensor([self.prompt] * len(audios))
      out = model(encoder_outputs=(enc,), decoder_input_ids=ids, use_cache=True)
      done = torch.zeros(len(audios), dtype=torch.bool)
      steps = []
      for step in range(max_new):
        logits = out.logits[:, -1].clone()
        logits[:, self.suppress] = -float("inf")
        if step == 0:
          logits[:, self.begin] = -float("inf")
        nxt = torch.where(done, self.eos, logits.argmax(-1))
        steps.append(nxt)
        done |= nxt == self.eos
        if done.all():
          break
        out = model(encoder_outputs=(enc,), decoder_input_ids=nxt[:, None], cache=out.cache,
                    use_cache=True)
    return self.text(torch.stack(steps, 1).numpy())

  def generate(self, audios: list[np.ndarray], max_new: int = 224) -> list[str]:
    """transformers' own `generate` (greedy, num_beams=1) on 30 s features."""
    import torch

    feats = self.features(audios)
    with torch.inference_mode():
      prompt = torch.tensor([self.prompt] * len(audios))
      tokens = self.model.generate(feats, decoder_input_ids=prompt, max_new_tokens=max_new,
                                   do_sample=False, num_beams=1, suppress_tokens=self.suppress,
                                   begin_suppress_tokens=self.begin)
    tokens = tokens.numpy()
    # Depending on the version, generate returns the prompt too: keep the new tokens only.
    if tokens.shape[1] >= 2 and (tokens[:, :2] == np.asarray(self.prompt)).all():
      tokens = tokens[:, 2:]
    return self.text(tokens)
