"""Transcription with a Whisper-LLaDA (diffusion) or Whisper-LLaMA (AR) checkpoint: a converted
Diffusion-ASR model or a run exported by train.py.

  ar            greedy AR with a KV cache (the causal Whisper-LLaMA baseline)
  diffusion     standalone diffusion decoding: one block of `gen_length` masks
  semi_ar       the same with blocks of `block_length`, left to right
  deliberation  re-fill part of a first-pass hypothesis (the batch's `hypothesis` texts);
                `text_only` drops the audio embeddings (the paper's ablation)

The audio is encoded exactly as in training: `mel_frames` log-mel frames (source.json of an exported
run; 3000 = Whisper's 30 s otherwise), so the LM sees the number of audio embeddings it was trained
with. Longer audio (over mel_frames / 100 s, `max_seconds`) is cut to that window by default, as
the authors' inference.py cuts every utterance to 30 s (`too_long="trim"`; eval.py counts them in
summary.json's truncated_utts); `too_long="error"` refuses it instead.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp
import zlib

import numpy as np
from flax import nnx

from llada_jax import decoding
from llada_jax.data.audio import SAMPLE_RATE
from llada_jax.decoding.scores import utterance_keys
from llada_jax.decoding.slots import SlotDecoder
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.errors import ModelError, UtteranceError
from llada_jax.inference.transcriber import TOO_LONG, Result, Transcriber
from llada_jax.models import checkpoint as ckpt
from llada_jax.models import features, text
from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.features import HOP
from llada_jax.parallel import distributed
from llada_jax.parallel.placement import Placement

STRATEGIES = ("ar", "diffusion", "semi_ar", "deliberation")
HYPOTHESIS_BUCKET = 32  # whole hypotheses: responses padded to a multiple of this many tokens


Decoding = tp.Union[decoding.GreedySettings, decoding.DiffusionSettings,
                   decoding.DeliberationSettings]


@dataclasses.dataclass(frozen=True)
class LLaDASettings:
  """How a Whisper-LLaDA / Whisper-LLaMA checkpoint transcribes: the decoding loop's own settings
  (`decoding`) and what the transcriber does around it. The decoding settings choose the
  strategy (`strategy`):

    GreedySettings                      ar: the causal Whisper-LLaMA
    DiffusionSettings(block_length=None) diffusion: one block of gen_length masks
    DiffusionSettings(block_length=32)   semi_ar: blocks, left to right
    DeliberationSettings                deliberation: re-fill part of first-pass hypotheses

  Lengths left None come from the checkpoint: gen_length (max_new_tokens) = the run's
  response_len, else 128; steps = gen_length. `LLaDASettings.paper(strategy)` gives the paper's
  defaults: 128 steps over 128 tokens, low-confidence remasking, semi-AR blocks of 32,
  deliberation semi-AR over 4 sub-blocks.
  """

  decoding: Decoding = decoding.DiffusionSettings(gen_length=None, steps=None, block_length=None)
  adaptive_length: bool = False  # gen length per batch from its longest utterance (32/64/96/128)
  mel_frames: int | None = None  # encoder input frames; default: the run's, else 3000 = 30 s
  seed: int = 0  # key for random masking / remasking / temperature
  too_long: str = "trim"  # audio over mel_frames / 100 s: cut to it, or "error" (TOO_LONG)
  # Deliberation's inputs. text_only: no audio embeddings (the paper's ablation).
  text_only: bool = False
  # First-pass hypotheses: None feeds each one whole, as Diffusion-ASR does (the response is as
  # long as the hypothesis; batches are padded to a multiple of HYPOTHESIS_BUCKET tokens); N cuts
  # them to N tokens.
  hypothesis_tokens: int | None = None
  # The form hypotheses are given in (text.TEXT_FORMS); None: the form the model was trained on
  # (source.json: a converted Diffusion-ASR checkpoint reads raw text).
  text_form: str | None = None

  def __post_init__(self):
    if not isinstance(self.decoding, tp.get_args(Decoding)):
      raise ValueError(f"LLaDASettings.decoding={self.decoding!r}: expected GreedySettings, "
                       f"DiffusionSettings or DeliberationSettings")
    if self.too_long not in TOO_LONG:
      raise ValueError(f"LLaDASettings.too_long={self.too_long!r}: expected one of {TOO_LONG}")
    if self.text_form is not None and self.text_form not in text.TEXT_FORMS:
      raise ValueError(f"LLaDASettings.text_form={self.text_form!r}: expected one of "
                       f"{text.TEXT_FORMS}")
    if self.hypothesis_tokens is not None and self.hypothesis_tokens < 1:
      raise ValueError(f"LLaDASettings.hypothesis_tokens={self.hypothesis_tokens}: expected ≥ 1")

  @property
  def strategy(self) -> str:
    """One of STRATEGIES, from the decoding settings."""
    d = self.decoding
    if isinstance(d, decoding.GreedySettings):
      return "ar"
    if isinstance(d, decoding.DeliberationSettings):
      return "deliberation"
    return "diffusion" if d.block_length is None else "semi_ar"

  @classmethod
  def paper(cls, strategy: str = "diffusion", **fields) -> LLaDASettings:
    """The paper's decoding settings for `strategy` (lengths from the checkpoint); `fields` set
    LLaDASettings' other fields."""
    unset = dict(gen_length=None, steps=None)
    by_strategy = {
        "ar": decoding.GreedySettings(),
        "diffusion": decoding.DiffusionSettings(**unset, block_length=None),
        "semi_ar": decoding.DiffusionSettings(**unset, block_length=32),
        "deliberation": decoding.DeliberationSettings(steps=None),
    }
    if strategy not in by_strategy:
      raise ValueError(f"strategy {strategy!r}: expected one of {STRATEGIES}")
    return cls(decoding=by_strategy[strategy], **fields)


def utterance_seed(utterance_id: str) -> int:
  """The key of an utterance's random streams (random masking / remasking, temperature): from
  its id, so they do not depend on the batch or the slot it is decoded in."""
  return zlib.crc32(str(utterance_id).encode()) & 0x7FFFFFFF


class LLaDATranscriber(Transcriber):
  max_seconds: float | None = 30.0

  def __init__(self, checkpoint: str | os.PathLike, settings: LLaDASettings | None = None,
               *, batch_size: int = 16, placement: Placement | None = None, dtype: str = "auto",
               attention: str | None = None, merge_lora: bool = True, quantize: str = "none"):
    super().__init__(batch_size, placement or Placement.create())
    s = self.settings = settings or LLaDASettings()
    self.name = s.strategy
    try:
      config = ckpt.read_config(checkpoint)
    except (ckpt.CheckpointError, ValueError, OSError) as e:
      raise ModelError(f"checkpoint {checkpoint}: {e}") from e
    if not isinstance(config, WhisperLLaDAConfig):
      raise ModelError(f"LLaDASettings.strategy={s.strategy!r} needs a Whisper-LLaDA checkpoint "
                       f"(converted as kind 'whisper_llada', or a train.py run's export); "
                       f"{checkpoint} holds a {type(config).__name__}")
    if s.strategy == "ar" and not config.lm.causal:
      raise ModelError(f"LLaDASettings.strategy='ar' needs the causal Whisper-LLaMA; {checkpoint} "
                       f"is a LLaDA")
    if s.strategy != "ar" and config.lm.causal:
      raise ModelError(f"LLaDASettings.strategy={s.strategy!r} needs a bidirectional LLaDA; "
                       f"{checkpoint} is causal (use strategy 'ar')")
    info = ckpt.read_source_info(checkpoint)
    self.config = config
    self.tokenizer = text.load_tokenizer(checkpoint)
    self.prompt = np.asarray(
        [text.prompt_ids(self.tokenizer, config.prompt, config.system_prompt)], np.int32)
    # Runs exported before the text form was recorded were trained on normalized text.
    stored_form = info.get("text_form", "normalized" if info.get("format") == "trained" else "raw")
    self.text_form = s.text_form or stored_form
    self.mel_frames = int(s.mel_frames or info.get("mel_frames", config.whisper.max_mel_frames))
    d = s.decoding
    given = d.max_new_tokens if isinstance(d, decoding.GreedySettings) else getattr(
        d, "gen_length", None)
    self.gen_length = int(given or info.get("response_len", 128))
    self.steps = int(getattr(d, "steps", None) or self.gen_length)
    if s.strategy == "semi_ar" and not s.adaptive_length and self.gen_length % d.block_length:
      raise ModelError(f"DiffusionSettings.gen_length {self.gen_length} (the checkpoint's response "
                       f"length where unset) is not a multiple of block_length {d.block_length}")
    self.buckets = (self.mel_frames * HOP,)
    # response tokens that fit the LM's context after the prompt and the audio embeddings
    audio = config.qformer.num_windows(self.mel_frames // 2) * config.qformer.num_queries
    self.room = config.lm.max_seq_len - self.prompt.shape[1] - (0 if s.text_only else audio)
    if self.room < 1:
      raise ModelError(f"{checkpoint}: {self.prompt.shape[1]} prompt + {audio} audio tokens leave "
                       f"no room for a response in the LM's {config.lm.max_seq_len} positions")
    self.max_seconds = self.mel_frames / 100.0
    self.too_long = s.too_long
    try:
      self._load(checkpoint, dtype=dtype, attention=attention, merge_lora=merge_lora,
                 quantize=quantize)
    except (ckpt.CheckpointError, OSError, ValueError) as e:
      raise ModelError(f"checkpoint {checkpoint}: {e}") from e
    dual = getattr(d, "dual_cache", False)
    self.info = {"mel_frames": self.mel_frames, "gen_length": self.gen_length,
                 "steps": self.steps, "threshold": getattr(d, "threshold", None),
                 "cache": "dual" if dual else getattr(d, "cache", False),
                 "prompt_tokens": int(self.prompt.shape[1])}
    if isinstance(d, decoding.DeliberationSettings):
      self.info.update({"masking": d.masking, "mask_ratio": d.mask_ratio,
                        "strategy": d.strategy, "num_chunks": d.num_chunks,
                        "text_only": s.text_only, "text_form": self.text_form,
                        "hypothesis_tokens": s.hypothesis_tokens})

  # -- inputs ------------------------------------------------------------------------------------
  # Every input is this process's rows, as numpy; the compiled function computes the log-mel and
  # the per-row keys itself, so nothing runs op by op on (global) device arrays.

  def _audio(self, batch: AudioBatch) -> np.ndarray:
    return np.asarray(batch.audio, np.float32)[:, : self.buckets[0]]

  def _prompt(self, batch: AudioBatch) -> np.ndarray:
    return np.repeat(self.prompt, len(batch.ids), axis=0)

  def _seeds(self, batch: AudioBatch) -> np.ndarray:
    # Per-utterance keys (from the id), so random modes do not depend on batch composition.
    return np.asarray([utterance_seed(i) for i in batch.ids], np.int32)

  def _gen_length(self, batch: AudioBatch, multiple_of: int = 1) -> int:
    if not self.settings.adaptive_length:
      return self.gen_length
    # The longest utterance of the global batch: every process compiles the same shape.
    samples = distributed.agree_max(
        np.max(np.asarray(batch.audio_len)[np.asarray(batch.valid)], initial=0))
    return decoding.adaptive_gen_length(samples / SAMPLE_RATE, multiple_of=multiple_of)

  def _hypothesis_ids(self, hypothesis: str) -> list[int]:
    # Diffusion-ASR: `tokenizer(origin_transcripts, add_special_tokens=False)`, untruncated.
    return text.token_ids(self.tokenizer, hypothesis, self.text_form)[
        : self.settings.hypothesis_tokens]

  def _hypothesis_width(self, longest: int) -> int:
    """Response width for hypotheses of up to `longest` tokens."""
    if self.settings.hypothesis_tokens is not None:
      return self.settings.hypothesis_tokens
    # whole hypotheses, in a few static widths, as far as the LM's context allows
    return min(max(1, -(-longest // HYPOTHESIS_BUCKET)) * HYPOTHESIS_BUCKET, self.room)

  def _multiple_of(self) -> int:
    d = self.settings.decoding
    return (d.block_length or 1) if isinstance(d, decoding.DiffusionSettings) else 1

  def batch_key(self, samples: int, hypothesis: str | None = None) -> tp.Hashable:
    s, key = self.settings, (self.width_for(min(samples, self.buckets[0])),)
    if s.strategy == "deliberation":
      return key + (self._hypothesis_width(len(self._hypothesis_ids(hypothesis or ""))),)
    if s.adaptive_length:
      key += (decoding.adaptive_gen_length(samples / SAMPLE_RATE,
                                           multiple_of=self._multiple_of()),)
    return key

  def key_examples(self) -> list[tuple[int, str | None]]:
    s, window = self.settings, self.buckets[0]
    if s.strategy == "deliberation":
      out, words, width = {}, 0, 0
      while width < self._hypothesis_width(self.room):  # a hypothesis of each width
        words += 1
        hyp = " ".join(["the"] * words)
        width = self._hypothesis_width(len(self._hypothesis_ids(hyp)))
        out.setdefault(width, (window, hyp))
      return list(out.values())
    if not s.adaptive_length:
      return [(window, None)]
    out = {}
    for n in range(HOP, window + 1, HOP):  # each gen-length bucket that audio of a window reaches
      out.setdefault(self.batch_key(n), (n, None))
    return list(out.values())

  # -- block-boundary scheduling (a server's `--schedule block`) ---------------------------------

  def slot_decoder(self) -> SlotDecoder:
    """This transcriber's standalone decoding with `batch_size` slots fed at block boundaries
    (`decoding.slots`): a row's tokens are what `transcribe` gives it. ValueError naming the
    setting where that is not possible."""
    s, d = self.settings, self.settings.decoding
    if s.strategy not in ("diffusion", "semi_ar"):
      raise ValueError(f"block scheduling runs standalone diffusion / semi-AR decoding, not "
                       f"LLaDASettings.strategy={s.strategy!r}")
    if s.adaptive_length:
      raise ValueError("block scheduling needs one response length: LLaDASettings."
                       "adaptive_length must be off")
    if self.placement.mesh.size != 1:
      raise ValueError(f"block scheduling runs on one device; this transcriber's mesh is "
                       f"{dict(self.placement.mesh.shape)}")
    settings = dataclasses.replace(d, gen_length=self.gen_length, steps=self.steps,
                                   block_length=d.block_length or self.gen_length)
    return SlotDecoder(self._graphdef, self._state, self.config, self.prompt, settings,
                       rows=self.batch_size, mel_frames=self.mel_frames, seed=s.seed)

  def text_of(self, tokens: np.ndarray) -> Result:
    """A `slot_decoder` row's response tokens → its result, as `transcribe` gives it."""
    return self._texts(np.asarray(tokens)[None])[0]

  def _texts(self, ids) -> list[Result]:
    eos = self.config.lm.eos_id
    return [(text.decode_response(self.tokenizer, row, eos), None) for row in np.asarray(ids)]

  def _run(self, what: str, settings, fn, audio: np.ndarray | None, *rows: np.ndarray,
           seeds: np.ndarray) -> np.ndarray:
    """`fn(model, mel, *rows, keys)` on this process's rows, through its compiled executable for
    these shapes and settings; this process's rows of the result."""
    graphdef, n_mels, frames = self._graphdef, self.config.whisper.n_mels, self.mel_frames
    seed = self.settings.seed

    def call(state, audio, seeds, *rows):
      mel = None if audio is None else features.log_mel(audio, n_mels=n_mels, frames=frames)
      keys = utterance_keys(seed, seeds)
      return fn(nnx.merge(graphdef, state), mel, *rows, keys)

    p = tp.cast(Placement, self.placement)
    local = (audio, seeds, *rows)
    shapes = tuple(None if a is None else (a.shape, str(a.dtype)) for a in local)
    exe = self.compiled(
        (self.name, graphdef, settings, shapes, seed, frames), call, self._state,
        *(None if a is None else p.abstract(a) for a in local),
        in_shardings=(self._state_shardings,
                      *(None if a is None else p.batch_sharding(a.ndim) for a in local)),
        out_shardings=p.batch_sharding(2),
        what=f"{what}: batch {self.batch_size}, {settings}")
    return p.local(exe(self._state, *(None if a is None else p.put(a) for a in local)))

  # -- strategies --------------------------------------------------------------------------------

  def transcribe(self, batch: AudioBatch) -> list[Result | Exception]:
    if self.settings.strategy == "ar":
      return self._ar(batch)
    if self.settings.strategy == "deliberation":
      return self._deliberation(batch)
    return self._diffusion(batch)

  def _ar(self, batch: AudioBatch) -> list[Result | Exception]:
    n, eos = self._gen_length(batch), self.config.lm.eos_id
    ids = self._run("greedy AR", (n, eos), lambda model, mel, prompt, _: decoding.greedy(
        model, mel, prompt, max_new_tokens=n, eos_id=eos), self._audio(batch),
                    self._prompt(batch), seeds=self._seeds(batch))
    return self._texts(ids)

  def _diffusion(self, batch: AudioBatch) -> list[Result | Exception]:
    s, d = self.settings, self.settings.decoding
    gen = self._gen_length(batch, multiple_of=d.block_length or 1)
    settings = dataclasses.replace(d, gen_length=gen,
                                   steps=gen if s.adaptive_length else self.steps,
                                   block_length=d.block_length or gen)
    ids = self._run("diffusion decode", settings, lambda model, mel, prompt, keys: decoding.decode(
        model, mel, prompt, settings=settings, key=keys), self._audio(batch),
                    self._prompt(batch), seeds=self._seeds(batch))
    return self._texts(ids)

  def _deliberation(self, batch: AudioBatch) -> list[Result | Exception]:
    s, d, eos = self.settings, self.settings.decoding, self.config.lm.eos_id
    rows, missing = [], {}
    hypotheses = batch.hypothesis or [None] * len(batch.ids)
    for i, (utt, hyp) in enumerate(zip(batch.ids, hypotheses)):
      if hyp is None:
        if batch.valid[i]:
          missing[i] = UtteranceError(f"{utt}: no first-pass hypothesis")
        hyp = ""
      rows.append(self._hypothesis_ids(hyp))
    # the longest of the global batch: every process compiles the same shape
    width = self._hypothesis_width(distributed.agree_max(max((len(r) for r in rows), default=0))
                                   if s.hypothesis_tokens is None else 0)
    rows = [r[:width] for r in rows]
    lengths = [len(r) for r in rows]
    hyp_ids = np.full((len(rows), width), eos, np.int32)
    for i, ids in enumerate(rows):
      hyp_ids[i, : len(ids)] = ids
    settings = dataclasses.replace(d, steps=self.steps)
    out = self._run(
        "deliberation", settings, lambda model, mel, prompt, hyp, n, keys: decoding.deliberate(
            model, mel, prompt, hyp, n, settings=settings, key=keys),
        None if s.text_only else self._audio(batch), self._prompt(batch), hyp_ids,
        np.asarray(lengths, np.int32), seeds=self._seeds(batch))
    # Diffusion-ASR decodes the whole re-filled response with `skip_special_tokens=True`: an EOS
    # committed mid-sentence is dropped and the words after it are kept.
    return [missing[i] if i in missing else (text.decode_all(self.tokenizer, row[: lengths[i]]),
                                             None) for i, row in enumerate(out)]
