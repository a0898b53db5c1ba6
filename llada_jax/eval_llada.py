"""eval.py strategies for Whisper-LLaDA / Whisper-LLaMA checkpoints (a converted Diffusion-ASR model
or a training run exported by train.py).

  ar            greedy AR with a KV cache (the causal Whisper-LLaMA baseline)
  diffusion     standalone diffusion decoding: one block of --gen-length masks
  semi_ar       the same with blocks of --block-length, left to right
  deliberation  re-fill part of a first-pass hypothesis (--first-pass hyps.jsonl of another run);
                --text-only drops the audio embeddings (the paper's ablation)

The audio is encoded exactly as in training: `mel_frames` log-mel frames (source.json of an exported
run; 3000 = Whisper's 30 s otherwise), so the LM sees the number of audio embeddings it was trained
with. The paper caps utterances at 30 s: longer ones (here: longer than mel_frames / 100 s) get an
error record, never a silent cut.
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import checkpoint as ckpt
from llada_jax import decoding, features, text
from llada_jax.configs import WhisperLLaDAConfig
from llada_jax.evaluation import EvalError, UtteranceError, checkpoint_config

log = logging.getLogger(__name__)


class _Base:
  max_seconds: float | None = 30.0

  def __init__(self):
    self.buckets: tuple[int, ...] = ()
    self.info: dict = {}

  @staticmethod
  def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("strategies ar / diffusion / semi_ar / deliberation")
    g.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: = gen length, the paper's 128/128 setting)")
    g.add_argument("--gen-length", type=int, default=None,
                   help="response length (default: the run's response_len, else 128)")
    g.add_argument("--block-length", type=int, default=32, help="semi_ar block length")
    g.add_argument("--remasking", default="low_confidence", choices=("low_confidence", "random"))
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--threshold", type=float, default=None,
                   help="Fast-dLLM parallel decoding: also commit every token with confidence ≥ τ")
    g.add_argument("--cache", action="store_true", help="Fast-dLLM prefix KV cache per block")
    g.add_argument("--dual-cache", action="store_true",
                   help="Fast-dLLM dual cache (implies --cache): each cached step runs the block "
                   "alone (semi_ar); deliberation's sub-blocks differ per row: prefix cache there")
    g.add_argument("--adaptive-length", action="store_true",
                   help="gen length per batch from its longest utterance, bucketed (32/64/96/128)")
    g.add_argument("--mel-frames", type=int, default=None,
                   help="encoder input frames (default: the run's mel_frames, else 3000 = 30 s)")
    g.add_argument("--first-pass", help="deliberation: hyps.jsonl of the first-pass run")
    g.add_argument("--masking", default="random", choices=("random", "low_confidence"))
    g.add_argument("--mask-ratio", type=float, default=0.3)
    g.add_argument("--deliberation-strategy", default="semi_ar", choices=("semi_ar", "diffusion"))
    g.add_argument("--num-chunks", type=int, default=4)
    g.add_argument("--text-only", action="store_true",
                   help="deliberation without audio embeddings (the paper's ablation)")
    g.add_argument("--seed", type=int, default=0, help="key for random masking / remasking")

  def prepare(self, checkpoint: str, args: argparse.Namespace) -> None:
    import llada_jax

    config = checkpoint_config(checkpoint, WhisperLLaDAConfig,
                               f"--strategy {self.name} needs a Whisper-LLaDA checkpoint (convert "
                               f"--kind whisper_llada, or a train.py run's export)")
    if self.name == "ar" and not config.lm.causal:
      raise EvalError(f"--strategy ar needs the causal Whisper-LLaMA; {checkpoint} is a LLaDA")
    if self.name != "ar" and config.lm.causal:
      raise EvalError(f"--strategy {self.name} needs a bidirectional LLaDA; {checkpoint} is causal "
                      f"(use --strategy ar)")
    info = ckpt.read_source_info(checkpoint)
    self.config = config
    self.tokenizer = text.load_tokenizer(checkpoint)
    self.prompt = np.asarray(
        [text.prompt_ids(self.tokenizer, config.prompt, config.system_prompt)], np.int32)
    self.mel_frames = int(args.mel_frames or info.get("mel_frames", config.whisper.max_mel_frames))
    self.gen_length = int(args.gen_length or info.get("response_len", 128))
    self.steps = int(args.steps or self.gen_length)
    self.args = args
    self.batch_size = int(args.batch_size)
    self.buckets = (self.mel_frames * 160,)
    self.max_seconds = self.mel_frames / 100.0
    self.model = llada_jax.load(checkpoint)
    self.key = jax.random.key(args.seed)
    self.cache = bool(args.cache or args.dual_cache)  # the dual cache extends the prefix cache
    self.info = {"mel_frames": self.mel_frames, "gen_length": self.gen_length,
                 "steps": self.steps, "threshold": args.threshold,
                 "cache": "dual" if args.dual_cache else self.cache,
                 "prompt_tokens": int(self.prompt.shape[1])}

  def _mel(self, batch: dict) -> jax.Array:
    audio = jnp.asarray(batch["audio"][:, : self.buckets[0]])
    return features.log_mel(audio, n_mels=self.config.whisper.n_mels, frames=self.mel_frames)

  def _prompt(self, batch: dict) -> jax.Array:
    return jnp.asarray(np.repeat(self.prompt, len(batch["ids"]), axis=0))

  def _row_keys(self, batch: dict) -> jax.Array:
    # Per-utterance keys (from the id), so random modes do not depend on batch composition.
    seeds = [zlib.crc32(str(i).encode()) & 0x7FFFFFFF for i in batch["ids"]]
    return jax.vmap(lambda s: jax.random.fold_in(self.key, s))(jnp.asarray(seeds, jnp.int32))

  def _gen_length(self, batch: dict, multiple_of: int = 1) -> int:
    if not self.args.adaptive_length:
      return self.gen_length
    seconds = float(np.max(np.asarray(batch["audio_len"])[np.asarray(batch["valid"])], initial=0))
    return decoding.adaptive_gen_length(seconds / 16000.0, multiple_of=multiple_of)

  def _texts(self, ids: jax.Array) -> list[tuple[str, None]]:
    eos = self.config.lm.eos_id
    return [(text.decode_response(self.tokenizer, row, eos), None) for row in np.asarray(ids)]


class ARStrategy(_Base):
  name = "ar"

  def transcribe(self, batch: dict):
    ids = decoding.greedy(self.model, self._mel(batch), self._prompt(batch),
                          max_new_tokens=self._gen_length(batch), eos_id=self.config.lm.eos_id)
    return self._texts(ids)


class DiffusionStrategy(_Base):
  name = "diffusion"

  def _block(self, gen_length: int) -> int:
    return gen_length

  def transcribe(self, batch: dict):
    a = self.args
    gen = self._gen_length(batch, multiple_of=self.args.block_length if self.name == "semi_ar" else 1)
    block = self._block(gen)
    steps = self.steps if not a.adaptive_length else gen
    settings = decoding.DiffusionSettings(
        gen_length=gen, steps=steps, block_length=block, remasking=a.remasking,
        temperature=a.temperature, threshold=a.threshold, cache=self.cache,
        dual_cache=a.dual_cache)
    ids = decoding.decode(self.model, self._mel(batch), self._prompt(batch), settings=settings,
                          key=self._row_keys(batch))
    return self._texts(ids)


class SemiARStrategy(DiffusionStrategy):
  name = "semi_ar"

  def _block(self, gen_length: int) -> int:
    if gen_length % self.args.block_length:
      raise EvalError(f"--gen-length {gen_length} is not a multiple of --block-length "
                      f"{self.args.block_length}")
    return self.args.block_length


class DeliberationStrategy(_Base):
  name = "deliberation"

  def prepare(self, checkpoint: str, args: argparse.Namespace) -> None:
    super().prepare(checkpoint, args)
    if not args.first_pass:
      raise EvalError("--strategy deliberation needs --first-pass HYPS.jsonl (another run's output)")
    path = Path(args.first_pass)
    if not path.is_file():
      raise EvalError(f"--first-pass {path}: no such file")
    self.first_pass = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise EvalError(f"--first-pass {path}:{n}: not JSON ({e})") from e
      if "hyp" in row and "id" in row:
        self.first_pass[row["id"]] = row["hyp"]
    self.info.update({"first_pass": str(path), "masking": args.masking,
                      "mask_ratio": args.mask_ratio, "strategy": args.deliberation_strategy,
                      "num_chunks": args.num_chunks, "text_only": bool(args.text_only)})

  def transcribe(self, batch: dict):
    a, eos = self.args, self.config.lm.eos_id
    rows, lengths, missing = [], [], {}
    for i, utt in enumerate(batch["ids"]):
      hyp = self.first_pass.get(utt)
      if hyp is None:
        if batch["valid"][i]:
          missing[i] = UtteranceError(f"{utt}: no first-pass hypothesis in {a.first_pass}")
        hyp = ""
      rows.append(text.hypothesis_ids(self.tokenizer, hyp, self.gen_length))
      lengths.append(len(rows[-1]))
    width = self.gen_length
    hyp_ids = np.full((len(rows), width), eos, np.int32)
    for i, ids in enumerate(rows):
      hyp_ids[i, : len(ids)] = ids
    settings = decoding.DeliberationSettings(
        strategy=a.deliberation_strategy, masking=a.masking, mask_ratio=a.mask_ratio,
        steps=self.steps, num_chunks=a.num_chunks, remasking=a.remasking,
        temperature=a.temperature, threshold=a.threshold, cache=self.cache)
    mel = None if a.text_only else self._mel(batch)
    out = np.asarray(decoding.deliberate(
        self.model, mel, self._prompt(batch), jnp.asarray(hyp_ids),
        jnp.asarray(lengths, jnp.int32), settings=settings, key=self._row_keys(batch)))
    results = []
    for i, row in enumerate(out):
      if i in missing:
        results.append(missing[i])
      else:
        results.append((text.decode_response(self.tokenizer, row[: lengths[i]], eos), None))
    return results
