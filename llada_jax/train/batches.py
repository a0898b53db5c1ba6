"""Pipeline batches (16 kHz audio + transcripts) → fixed-shape model inputs, and the encoder cache.

Every batch has the same shapes: audio padded/cut to `data.mel_frames * 160` samples (the log-mel is
taken inside the jitted step), the prompt ids repeated per row, the response padded with EOS to the
bucket length. An optional cache keeps the frozen encoder's output per utterance id on disk, so a
CPU run computes Whisper once per utterance instead of once per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import typing as tp
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.config_files import ConfigError
from llada_jax.models import features, text
from llada_jax.parallel import sharding
from llada_jax.train.config import TrainConfig

if tp.TYPE_CHECKING:
  from llada_jax.data.pipeline import PipelineConfig

log = logging.getLogger(__name__)


def prompt_ids(cfg: TrainConfig, tokenizer) -> tuple[list[int], int]:
  """The run's chat prompt ids and its sequence length (prompt + audio + response), checked
  against the LM's context and vocabulary."""
  prompt = text.prompt_ids(tokenizer, cfg.model.prompt, cfg.model.system_prompt)
  lm = cfg.model.lm
  seq = len(prompt) + cfg.audio_len + cfg.data.response_len
  if seq > lm.max_seq_len:
    raise ConfigError(f"sequence of {len(prompt)} prompt + {cfg.audio_len} audio + "
                      f"{cfg.data.response_len} response tokens exceeds model.lm.max_seq_len "
                      f"{lm.max_seq_len}")
  vocab = len(tokenizer)
  if vocab > lm.vocab_size:
    raise ConfigError(f"the tokenizer has {vocab} tokens, model.lm.vocab_size is {lm.vocab_size}")
  return prompt, seq


def pipeline_config(cfg: TrainConfig, *, train: bool, host_rows: int | None = None
                    ) -> PipelineConfig:
  """One bucket of exactly the samples the step takes: every batch has one shape. `host_rows`:
  the rows of each global batch this host loads (default: all of them)."""
  # Imported here: the train step (and a benchmark of it) needs no data-pipeline packages.
  from llada_jax.data.pipeline import PipelineConfig

  return PipelineConfig(batch_size=host_rows or cfg.batch_size, buckets=(cfg.data.samples,),
                        seed=cfg.seed, shuffle=cfg.data.shuffle and train,
                        num_epochs=None if train else 1, too_long="trim",
                        num_threads=max(cfg.data.num_threads, 1), prefetch=cfg.data.prefetch)


def host_rows(cfg: TrainConfig, mesh: jax.sharding.Mesh, rules: sharding.ShardingConfig,
              process_index: int | None = None,
              process_of: tp.Callable[[jax.Device], int] = lambda d: d.process_index
              ) -> np.ndarray:
  """The rows of every global batch that this process (or `process_index`) loads: those its
  devices hold under the batch sharding. A ConfigError, before anything compiles, if a group_max
  pad group would straddle hosts (a group is EOS-padded on the host that loads it, so each host's
  rows must be whole groups of `data.pad_group` consecutive rows)."""
  b = cfg.batch_size
  batch = sharding.batch_sharding(mesh, rules, (b,))
  processes = sorted({process_of(d) for d in mesh.devices.flat})
  if cfg.objective == "diffusion" and cfg.data.response_eos == "group_max":
    g = cfg.data.pad_group
    for p in processes:
      rows = sharding.process_rows(batch, b, p, process_of)
      starts = rows[::g]
      whole = rows.shape[0] % g == 0 and not (starts % g).any() and (
          rows.reshape(-1, g) == starts[:, None] + np.arange(g)).all()
      if not whole:
        raise ConfigError(
            f"data.pad_group={g}: process {p} of {len(processes)} loads rows {spans(rows)} of "
            f"the {b}-row batch (mesh {dict(mesh.shape)}): not whole groups of {g} consecutive "
            f"rows, and a group's rows are padded together on one host")
  return sharding.process_rows(batch, b, process_index, process_of)


def spans(rows: np.ndarray) -> str:
  """[0, 1, 2, 5, 6] → "0-2, 5-6"."""
  cuts = np.flatnonzero(np.diff(rows) != 1) + 1
  return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(rows, cuts))


class BatchMaker:
  """Pipeline batches → the train step's inputs, with the run's text form and EOS rule."""

  def __init__(self, cfg: TrainConfig, tokenizer, prompt: tp.Sequence[int]):
    self.cfg, self.tokenizer = cfg, tokenizer
    self.prompt = np.asarray(prompt, np.int32)
    self.eos = cfg.model.lm.eos_id
    # The AR baseline always appends EOS: it must learn to stop.
    self.group_max = cfg.objective == "diffusion" and cfg.data.response_eos == "group_max"
    self.truncated = 0  # transcripts cut to data.response_len

  def __call__(self, raw: dict) -> dict[str, tp.Any]:
    """A pipeline batch → {audio, prompt, response, response_len, target_len, audio_len, valid}
    plus ids and text lists. audio_len: samples of real audio per row (all if the pipeline does
    not say). response_len counts a row's real tokens (with its EOS where one is appended);
    target_len the positions the diffusion objective sees and trains (see `DataConfig`)."""
    c = self.cfg.data
    audio = np.asarray(raw["audio"], np.float32)
    b = audio.shape[0]
    if audio.shape[1] != c.samples:  # the pipeline's single bucket is this width already
      audio = features.pad_or_trim(list(audio), c.samples)[0]
    r = c.response_len
    response = np.full((b, r), self.eos, np.int32)
    lengths = np.zeros((b,), np.int32)
    valid = np.asarray(raw["valid"], bool)
    room = r if self.group_max else r - 1  # leave room for the appended EOS
    for i in np.flatnonzero(valid):
      ids = text.token_ids(self.tokenizer, raw["text"][i], c.text_form)
      self.truncated += len(ids) > room
      ids = ids[:room]
      response[i, :len(ids)] = ids
      lengths[i] = len(ids) + (0 if self.group_max else 1)
    if self.group_max:
      # Diffusion-ASR: `tokenizer(texts, padding=True)` per GPU batch: each group of pad_group rows
      # is as long as its longest transcript (that row gets no EOS, the others EOS padding).
      g = c.pad_group
      target = np.repeat(lengths.reshape(b // g, g).max(axis=1), g).astype(np.int32)
    else:
      target = np.full((b,), r, np.int32)
    prompt = np.broadcast_to(self.prompt, (b, self.prompt.shape[0])).copy()
    audio_len = np.minimum(np.asarray(raw.get("audio_len", [c.samples] * b), np.int32), c.samples)
    return {"audio": audio, "prompt": prompt, "response": response, "response_len": lengths,
            "target_len": target, "audio_len": audio_len, "valid": valid, "ids": list(raw["ids"]),
            "text": list(raw["text"])}


def real_tokens(cfg: TrainConfig, prompt_len: int, batch: dict) -> jax.Array:
  """[B] float32: the tokens of each row that are its utterance's, not padding: the prompt, the
  audio embeddings of the Q-Former windows that hold some of its audio (`audio_len` samples), its
  transcript (with the EOS where one is appended: `response_len`); 0 for a padding row."""
  q = cfg.model.qformer
  enc_frames = -(-batch["audio_len"] // (2 * features.HOP))  # stride-2 encoder frames of real audio
  windows = jnp.minimum(-(-enc_frames // q.window_frames), q.num_windows(cfg.data.mel_frames // 2))
  n = prompt_len + windows * q.num_queries + batch["response_len"]
  return jnp.where(batch["valid"], n, 0).astype(jnp.float32)


def cache_fingerprint(cfg: TrainConfig) -> str:
  """What the encoder output depends on: its config, weights source, frames and precision."""
  key = {"whisper": dataclasses.asdict(cfg.resolved_model().whisper),
         # init_whisper is loaded after init_model, so its encoder is the one that runs
         "weights": cfg.init_whisper or cfg.init_model or f"random-seed-{cfg.seed}",
         "mel_frames": cfg.data.mel_frames}
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class EncoderCache:
  """Encoder outputs [frames/2, d] per utterance (id + audio digest), as float32 .npy under
  `root/<fingerprint>/`."""

  def __init__(self, root: str | os.PathLike, fingerprint: str,
               encode: tp.Callable[[np.ndarray], np.ndarray]):
    self.folder = Path(root) / fingerprint
    self.folder.mkdir(parents=True, exist_ok=True)
    self.encode = encode
    self.hits = self.misses = 0

  def _path(self, utt_id: str, audio: np.ndarray) -> Path:
    # The audio's digest is part of the name: a corpus rebuilt in place (same ids, other audio)
    # must not be served the old encodings.
    digest = hashlib.blake2b(np.ascontiguousarray(audio).tobytes(), digest_size=6).hexdigest()
    return self.folder / f"{utt_id.replace(os.sep, '_')}-{digest}.npy"

  def __call__(self, batch: dict) -> dict:
    valid = batch["valid"]
    audio = np.asarray(batch["audio"], np.float32)
    paths = [self._path(u, a) if v else None for u, a, v in zip(batch["ids"], audio, valid)]
    if all(p is None or p.is_file() for p in paths):
      rows = [np.load(p) if p is not None else None for p in paths]
      shape = next((r.shape for r in rows if r is not None), None)
      if shape is None:  # an all-padding batch: shape from a fresh encode
        enc = self.encode(batch["audio"])
      else:
        enc = np.stack([r if r is not None else np.zeros(shape, np.float32) for r in rows])
      self.hits += int(valid.sum())
    else:
      enc = self.encode(batch["audio"])
      for p, row in zip(paths, enc):
        if p is not None and not p.is_file():
          tmp = p.with_suffix(f".tmp{os.getpid()}.npy")
          np.save(tmp, row)
          os.replace(tmp, p)  # a reader never sees half a file
      self.misses += int(valid.sum())
    out = {k: v for k, v in batch.items() if k != "audio"}
    out["enc"] = enc.astype(np.float32)
    return out


def encoder_fn(trainer) -> tp.Callable[[np.ndarray], np.ndarray]:
  """audio [B, samples] → frozen encoder output [B, frames/2, d] as numpy, on the trainer's mesh."""
  cfg, mcfg = trainer.cfg, trainer.model_cfg
  shape = (cfg.batch_size, cfg.data.samples)
  audio_sh = sharding.batch_sharding(trainer.mesh, trainer.rules, shape)

  def encode(frozen, audio):
    model = nnx.merge(trainer.eval_def, trainer.to_state(trainer.template_params()), frozen)
    mel = features.log_mel(audio, n_mels=mcfg.whisper.n_mels, frames=cfg.data.mel_frames)
    return model.encoder(mel).astype(jnp.float32)

  jitted = jax.jit(encode, in_shardings=(trainer.frozen_sh, audio_sh))

  def run(audio: np.ndarray) -> np.ndarray:
    with sharding.use(trainer.mesh, trainer.rules):
      x = jax.make_array_from_process_local_data(audio_sh, np.asarray(audio, np.float32), shape)
      return np.asarray(jitted(trainer.frozen, x))

  return run
