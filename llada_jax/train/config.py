"""Training config: one frozen dataclass tree. Runs are files in the top-level `configs/` folder.

    cfg = load("tiny", ["data.train=runs/corpus/train-clean", "optimizer.peak_lr=1e-3"])

`load` and the JSON round trip are `config_files`'s (every override is type-checked against
the field's annotation and names the field when it is wrong). `check_runtime` does the checks that
need the machine (devices, folders, checkpoints) so that a bad config fails before anything is
compiled.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp
from pathlib import Path

from llada_jax import config_files
from llada_jax.config_files import ConfigError
from llada_jax.data import manifest
from llada_jax.models import text
from llada_jax.models.config import (
  DTYPES,
  LMConfig,
  WhisperConfig,
  WhisperLLaDAConfig,
  check_remat,
)
from llada_jax.models.features import HOP
from llada_jax.parallel import sharding

OBJECTIVES = ("diffusion", "ar")
WEIGHTINGS = ("paper", "llada")
NAN_POLICIES = ("stop", "skip")
RESPONSE_EOS = ("group_max", "appended")
COSINE_FROM = ("warmup_end", "start")


def _one_of(name: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise ConfigError(f"{name}={value!r}: expected one of {allowed}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW; linear warm-up from `init_lr` to `peak_lr`, then cosine to `end_lr` at the last step."""

  peak_lr: float = 3e-5
  init_lr: float = 1e-6
  end_lr: float = 1e-5
  warmup_steps: int = 3000
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.05  # never on 1-D tensors (biases, norms)
  grad_clip: float = 1.0  # global-norm clip; 0 turns it off
  # The fresh Q-Former + projection learns at `projector_lr_scale` × the schedule (the pretrained
  # LM's weights at 1×): a new module needs a larger step than weights it should not forget.
  projector_lr_scale: float = 1.0
  # The cosine's phase: over the steps after warm-up ("warmup_end", optax's join), or over every
  # step from 0 ("start": Diffusion-ASR's LinearWarmupCosineLRScheduler, whose cosine has already
  # decayed a little when warm-up ends).
  cosine_from: str = "warmup_end"

  def __post_init__(self):
    for name in ("peak_lr", "init_lr", "end_lr", "eps", "weight_decay", "grad_clip",
                 "projector_lr_scale"):
      if getattr(self, name) < 0:
        raise ConfigError(f"optimizer.{name}={getattr(self, name)}: must be >= 0")
    if self.warmup_steps < 0:
      raise ConfigError(f"optimizer.warmup_steps={self.warmup_steps}: must be >= 0")
    for name in ("b1", "b2"):
      if not 0 <= getattr(self, name) < 1:
        raise ConfigError(f"optimizer.{name}={getattr(self, name)}: must be in [0, 1)")
    _one_of("optimizer.cosine_from", self.cosine_from, COSINE_FROM)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where utterances come from and how they become fixed-shape batches."""

  # LibriSpeech-layout folder, Diffusion-ASR JSON data file (FILE.json) or "tfds:NAME/SPLIT"
  train: str | None = None
  dev: str | None = None
  data_dir: str | None = None  # tfds data_dir for "tfds:" specs
  tokenizer: str | None = None  # folder with tokenizer.json; default: init_lm, then init_model
  # Transcripts as the LM reads them (text.TEXT_FORMS): "raw" as written (Diffusion-ASR trains on
  # the raw LibriSpeech annotation, upper case) or "normalized" (lower case, no punctuation).
  text_form: str = "raw"
  response_len: int = 128  # response bucket (static shapes): longer transcripts are cut
  # What the diffusion objective trains on (RESPONSE_EOS):
  #   "group_max" (Diffusion-ASR): no EOS appended; each `pad_group` rows (their per-GPU batch) are
  #     padded with EOS to their longest transcript, those EOS are targets, later positions are
  #     neither seen nor trained; the loss is the mean over groups of each group's mean over its
  #     masked tokens (DDP's mean of per-GPU losses).
  #   "appended": transcript + EOS, padded with EOS to response_len; every position a target, one
  #     mean over the batch's masked tokens.
  # The AR objective always appends EOS (the Whisper-LLaMA must learn to stop).
  response_eos: str = "group_max"
  pad_group: int = 4
  # Mel frames every utterance is padded/cut to (static shapes): 3000 = Whisper's 30 s. Less suits
  # short audio on CPU (the encoder is quadratic in it); the Q-Former then sees fewer windows.
  mel_frames: int = 3000
  encoder_cache: str | None = None  # folder of frozen-encoder outputs (numpy per utterance id)
  dev_batches: int = 0  # dev batches per validation (0: the whole dev set)
  wer_examples: int = 16  # dev utterances decoded for WER (0: off)
  shuffle: bool = True
  num_threads: int = 2
  prefetch: int = 4

  def __post_init__(self):
    _one_of("data.text_form", self.text_form, text.TEXT_FORMS)
    _one_of("data.response_eos", self.response_eos, RESPONSE_EOS)
    if self.response_len < 2:
      raise ConfigError(f"data.response_len={self.response_len}: need room for a token and EOS")
    if self.mel_frames <= 0 or self.mel_frames % 2:
      raise ConfigError(f"data.mel_frames={self.mel_frames}: must be a positive even number")
    for name in ("dev_batches", "wer_examples", "num_threads", "prefetch"):
      if getattr(self, name) < 0:
        raise ConfigError(f"data.{name}={getattr(self, name)}: must be >= 0")
    if self.pad_group < 1:
      raise ConfigError(f"data.pad_group={self.pad_group}: must be >= 1")

  @property
  def samples(self) -> int:
    return self.mel_frames * HOP


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: WhisperLLaDAConfig
  objective: str = "diffusion"  # masked diffusion (LLaDA) or "ar": next token (Whisper-LLaMA)
  # paper: CE averaged over masked tokens (Diffusion-ASR); llada: LLaDA SFT's Σ CE/p_mask / length.
  weighting: str = "paper"
  mask_eps: float = 1e-3  # llada weighting: p_mask = (1 - eps) t + eps
  optimizer: OptimizerConfig = OptimizerConfig()
  data: DataConfig = DataConfig()
  # Converted checkpoints (llada_jax.convert); absent = random init (tests).
  init_whisper: str | None = None  # a Whisper; its encoder is copied in
  init_lm: str | None = None  # a LLaDA / LLaMA; its weights go under the LoRA adapters
  init_model: str | None = None  # a whole Whisper-LLaDA (e.g. converted Diffusion-ASR .pth)
  full_finetune: bool = False  # train every weight but the encoder, not just LoRA + projector
  # With full_finetune: keep the token embeddings and output head as loaded. On a small LM their
  # vocab × width gradient and Adam update are a large share of the step.
  freeze_embeddings: bool = False
  dtype: str = "bfloat16"  # compute dtype of every matmul
  param_dtype: str = "bfloat16"  # storage of the frozen weights
  master_dtype: str = "float32"  # storage of the trained weights (and so of their Adam moments)
  # Recompute each LM layer in the backward pass by this policy (REMAT_POLICIES).
  remat: str = "none"
  mesh: tuple[int, ...] = (1, -1, 1)  # (data, fsdp, tensor); one entry may be -1
  # Weight placement preset (sharding.PRESETS): "full_fsdp" gathers every layer's weights over
  # fsdp where they are used; "lora_dp" keeps the frozen weights whole on every data-parallel
  # device (split over tensor only) and gathers none of them, for LoRA runs whose frozen model /
  # tensor fits a device; "replicated".
  sharding: str = "full_fsdp"
  batch_size: int = 32  # global, per optimizer step
  grad_accum: int = 1  # micro-batches per step (batch_size / grad_accum rows each)
  steps: int = 30000
  log_every: int = 10
  eval_every: int = 1000  # 0: never
  save_every: int = 1000
  keep_last: int = 3  # plus the best by validation loss
  async_save: bool = True
  nan_policy: str = "stop"  # non-finite loss/grad: stop with an error, or skip the update
  seed: int = 0
  # bf16 dense peak of one device, TFLOP/s, for the logged MFU; None: by device kind
  # (llada_jax.train.flops.PEAK_TFLOPS; unknown kinds, CPU included, log no MFU).
  peak_tflops_per_device: float | None = None
  # (first, last) step traced by jax.profiler into WORKDIR/profile on process 0; None: no trace.
  profile_steps: tuple[int, int] | None = None

  def __post_init__(self):
    _one_of("objective", self.objective, OBJECTIVES)
    _one_of("weighting", self.weighting, WEIGHTINGS)
    _one_of("nan_policy", self.nan_policy, NAN_POLICIES)
    _one_of("sharding", self.sharding, sharding.PRESET_NAMES)
    check_remat("TrainConfig", self.remat)
    for name in ("dtype", "param_dtype", "master_dtype"):
      _one_of(name, getattr(self, name), DTYPES)
    if not 0 < self.mask_eps < 1:
      raise ConfigError(f"mask_eps={self.mask_eps}: must be in (0, 1)")
    for name in ("batch_size", "grad_accum", "steps", "log_every", "save_every", "keep_last"):
      value = getattr(self, name)
      if value <= 0:
        raise ConfigError(f"{name}={value}: must be a positive int")
    if self.eval_every < 0:
      raise ConfigError(f"eval_every={self.eval_every}: must be >= 0")
    if self.peak_tflops_per_device is not None and self.peak_tflops_per_device <= 0:
      raise ConfigError(f"peak_tflops_per_device={self.peak_tflops_per_device}: must be > 0")
    if self.profile_steps is not None and (
        len(self.profile_steps) != 2 or not 1 <= self.profile_steps[0] <= self.profile_steps[1]):
      raise ConfigError(f"profile_steps={self.profile_steps}: expected (first, last) steps with "
                        f"1 <= first <= last")
    if self.batch_size % self.grad_accum:
      raise ConfigError(f"batch_size={self.batch_size} is not divisible by "
                        f"grad_accum={self.grad_accum}")
    if len(self.mesh) != 3 or any(s == 0 or s < -1 for s in self.mesh) or self.mesh.count(-1) > 1:
      raise ConfigError(f"mesh={self.mesh}: expected (data, fsdp, tensor) of positive sizes, at "
                        f"most one of them -1")
    lm = self.model.lm
    if self.objective == "diffusion":
      if lm.causal:
        raise ConfigError("objective='diffusion' needs a bidirectional LM: model.lm.causal=True")
      if not 0 <= lm.mask_id < lm.vocab_size:
        raise ConfigError(f"objective='diffusion': model.lm.mask_id={lm.mask_id} is not a token "
                          f"id of the vocabulary ({lm.vocab_size})")
    elif not lm.causal:
      raise ConfigError("objective='ar' needs a causal LM: model.lm.causal=False")
    if self.freeze_embeddings and not self.full_finetune:
      raise ConfigError("freeze_embeddings=true needs full_finetune=true (LoRA training never "
                        "updates the embeddings)")
    if lm.lora is None and not self.full_finetune:
      raise ConfigError("model.lm.lora is None and full_finetune=False: only the projector would "
                        "train; set full_finetune=true or give the LM a LoRA config")
    frames = self.data.mel_frames
    if frames > self.model.whisper.max_mel_frames:
      raise ConfigError(f"data.mel_frames={frames} exceeds Whisper's "
                        f"{self.model.whisper.max_mel_frames}")
    if self.model.qformer.num_windows(frames // 2) == 0:
      raise ConfigError(f"data.mel_frames={frames}: shorter than one Q-Former window "
                        f"({2 * self.model.qformer.window_frames} mel frames)")

  @property
  def micro_batch(self) -> int:
    return self.batch_size // self.grad_accum

  @property
  def audio_len(self) -> int:
    """Audio embeddings per utterance: windows of the encoder frames × queries."""
    q = self.model.qformer
    return q.num_windows(self.data.mel_frames // 2) * q.num_queries

  def resolved_model(self) -> WhisperLLaDAConfig:
    """The model config with this run's dtypes and remat (the model presets carry float32)."""
    m = self.model
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    return dataclasses.replace(
        m, whisper=dataclasses.replace(m.whisper, **kw),
        qformer=dataclasses.replace(m.qformer, **kw),
        lm=dataclasses.replace(m.lm, remat=self.remat, **kw))


# ---------------------------------------------------------------------------------------------
# Checks that need the machine, done before anything is compiled.

def load(spec: str, overrides: tp.Sequence[str] = ()) -> TrainConfig:
  """A run config: a name in configs/ (`paper`, `tiny`, …), a .py or a .json file, then `--set`s."""
  return config_files.load(spec, TrainConfig, overrides)


def save_json(cfg: TrainConfig, path: str | os.PathLike) -> None:
  config_files.save_json(cfg, path)


def mesh_shape(cfg: TrainConfig, num_devices: int) -> tuple[int, int, int]:
  try:
    return sharding.mesh_shape(cfg.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(f"mesh={tuple(cfg.mesh)}: {e}") from None


def data_parallel(cfg: TrainConfig, shape: tp.Sequence[int]) -> int:
  """How many ways the batch is split: data × fsdp (both shard the batch in every rule set)."""
  return shape[0] * shape[1]


def _check_checkpoint(field: str, path: str | None, kinds: tuple[type, ...]) -> None:
  if path is None:
    return
  from llada_jax.models import checkpoint

  try:
    stored = checkpoint.read_config(path)
    checkpoint.read_index(path)
  except (checkpoint.CheckpointError, ConfigError, OSError) as e:
    raise ConfigError(f"{field}={path!r}: {e}") from None
  if not isinstance(stored, kinds):
    raise ConfigError(f"{field}={path!r}: holds a {type(stored).__name__}, expected "
                      f"{' or '.join(k.__name__ for k in kinds)}")


def _check_data(field: str, spec: str | None, data_dir: str | None) -> None:
  if spec is None:
    raise ConfigError(f"{field} is not set: give a LibriSpeech-layout folder, a Diffusion-ASR "
                      f"JSON data file or tfds:NAME/SPLIT (override {field}=PATH)")
  if spec.startswith("tfds:"):
    name = spec[len("tfds:"):]
    if "/" not in name:
      raise ConfigError(f"{field}={spec!r}: expected tfds:NAME/SPLIT")
    return
  if manifest.is_manifest(spec):
    if not os.path.isfile(spec):
      raise ConfigError(f"{field}={spec!r}: no such file")
    return
  if not os.path.isdir(spec):
    raise ConfigError(f"{field}={spec!r}: no such folder")


def tokenizer_path(cfg: TrainConfig) -> str:
  for field in ("data.tokenizer", "init_lm", "init_model"):
    obj = cfg.data if field.startswith("data.") else cfg
    path = getattr(obj, field.split(".")[-1])
    if path is not None:
      return path
  raise ConfigError("data.tokenizer is not set (and no init_lm / init_model to take it from): "
                    "give a folder holding tokenizer.json")


def check_runtime(cfg: TrainConfig, num_devices: int, num_processes: int = 1,
                  need_data: bool = True) -> tuple[int, int, int]:
  """Everything that can be wrong with `cfg` on this machine, before compiling; the mesh shape."""
  hosts = f" over {num_processes} processes" if num_processes > 1 else ""
  try:
    shape = mesh_shape(cfg, num_devices)
  except ConfigError as e:
    raise ConfigError(f"{e}{hosts}") from None
  ways = data_parallel(cfg, shape)
  if cfg.micro_batch % ways:
    raise ConfigError(f"batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = "
                      f"{cfg.micro_batch} rows per micro-batch is not divisible by the {ways} "
                      f"data-parallel shards of mesh {shape} ({num_devices} devices{hosts})")
  # Which rows each host loads, and whether group_max pad groups stay on one host, follow from
  # the mesh's batch sharding: `batches.host_rows` checks that once the mesh exists.
  if cfg.data.encoder_cache is not None and num_processes > 1:
    raise ConfigError("data.encoder_cache is single-host only (each row's encoder output is "
                      "fetched to this host)")
  _check_checkpoint("init_whisper", cfg.init_whisper, (WhisperConfig,))
  _check_checkpoint("init_lm", cfg.init_lm, (LMConfig,))
  _check_checkpoint("init_model", cfg.init_model, (WhisperLLaDAConfig,))
  if need_data:
    _check_data("data.train", cfg.data.train, cfg.data.data_dir)
    if cfg.eval_every or cfg.data.wer_examples:
      _check_data("data.dev", cfg.data.dev, cfg.data.data_dir)
    tok = tokenizer_path(cfg)
    if not (Path(tok) / "tokenizer.json").is_file() and not (
        Path(tok) / "tokenizer_config.json").is_file():
      raise ConfigError(f"tokenizer folder {tok!r} holds no tokenizer.json")
  return shape
