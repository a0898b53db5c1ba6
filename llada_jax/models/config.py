"""Model configs: typed frozen dataclasses with named presets.

Every size the model code uses comes from here; nothing downstream hard-codes a width, a head count,
a token id or a mel-bin count. A converted checkpoint's config.json is `to_dict` (tagged with its
kind, read back by `from_dict`), so it carries the exact config it was built with.
"""

from __future__ import annotations

import dataclasses
import json

from llada_jax import config_files
from llada_jax.config_files import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
# Attention kernels (`layers.attention`): "xla" the einsum softmax; "dot_product"
# `jax.nn.dot_product_attention` with XLA choosing; "cudnn" its cuDNN flash kernel (GPU, bf16/fp16);
# "splash" the Pallas TPU splash-attention kernel; "auto" cudnn on GPU at half precision, splash on
# TPU, xla otherwise. A runtime choice: `checkpoint.with_attention` overrides a checkpoint's.
ATTENTION = ("xla", "dot_product", "cudnn", "splash", "auto")
# Rematerialisation of each LM layer in the backward pass (`stacked.remat_policy`): "none"; "full"
# (recompute the layer); "dots_saveable" (keep the weight matmuls' outputs, recompute the attention
# core); "names" (keep the attention output and the MLP input, tagged by `checkpoint_name`);
# "offload" (those two moved to pinned host memory: GPU / TPU). true / false from older configs
# mean full / none.
REMAT_POLICIES = ("none", "full", "dots_saveable", "names", "offload")


def check_remat(owner: str, value: str) -> str:
  if value not in REMAT_POLICIES:
    raise ConfigError(f"{owner}.remat={value!r}: expected one of {REMAT_POLICIES}")
  return value


def _check_dtype(owner: str, name: str, value: str) -> None:
  if value not in DTYPES:
    raise ConfigError(f"{owner}.{name}={value!r}: expected one of {DTYPES}")


def _check_attention(owner: str, value: str) -> None:
  if value not in ATTENTION:
    raise ConfigError(f"{owner}.attention={value!r}: expected one of {ATTENTION}")


def _positive(owner: str, **fields: int) -> None:
  for name, value in fields.items():
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"{owner}.{name}={value!r}: expected a positive int")


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
  """OpenAI Whisper (encoder + decoder); field names follow transformers' WhisperConfig."""

  n_mels: int = 80
  d_model: int = 384
  encoder_layers: int = 4
  decoder_layers: int = 4
  encoder_heads: int = 6
  decoder_heads: int = 6
  encoder_ffn_dim: int = 1536
  decoder_ffn_dim: int = 1536
  vocab_size: int = 51864
  max_source_positions: int = 1500  # encoder frames after the stride-2 conv: 30 s at 50 Hz
  max_target_positions: int = 448
  layer_norm_eps: float = 1e-5
  decoder_start_token_id: int = 50257
  eos_token_id: int = 50256
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  attention: str = "xla"  # one of ATTENTION

  def __post_init__(self):
    _positive("WhisperConfig", n_mels=self.n_mels, d_model=self.d_model,
              encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
              encoder_heads=self.encoder_heads, decoder_heads=self.decoder_heads,
              vocab_size=self.vocab_size, max_source_positions=self.max_source_positions,
              max_target_positions=self.max_target_positions)
    for heads in (self.encoder_heads, self.decoder_heads):
      if self.d_model % heads:
        raise ConfigError(f"WhisperConfig: d_model {self.d_model} not divisible by heads {heads}")
    _check_dtype("WhisperConfig", "dtype", self.dtype)
    _check_dtype("WhisperConfig", "param_dtype", self.param_dtype)
    _check_attention("WhisperConfig", self.attention)

  @property
  def max_mel_frames(self) -> int:
    return 2 * self.max_source_positions  # conv2 has stride 2

  @classmethod
  def whisper_tiny_en(cls, **kw) -> WhisperConfig:
    return cls(**kw)

  @classmethod
  def whisper_large_v3(cls, **kw) -> WhisperConfig:
    base = dict(n_mels=128, d_model=1280, encoder_layers=32, decoder_layers=32, encoder_heads=20,
                decoder_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, vocab_size=51866,
                decoder_start_token_id=50258, eos_token_id=50257)
    return cls(**{**base, **kw})

  @classmethod
  def tiny_test(cls, **kw) -> WhisperConfig:
    base = dict(n_mels=80, d_model=64, encoder_layers=2, decoder_layers=2, encoder_heads=4,
                decoder_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=300,
                max_source_positions=1500, max_target_positions=64, decoder_start_token_id=1,
                eos_token_id=2)
    return cls(**{**base, **kw})


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  """Window-level Q-Former (SALMONN / Diffusion-ASR): BERT layers with cross-attention per
  window."""

  encoder_width: int = 1280  # = Whisper d_model
  out_dim: int = 4096  # = LM d_model
  hidden_size: int = 768
  num_layers: int = 2
  num_heads: int = 12
  intermediate_size: int = 3072
  num_queries: int = 4
  window_seconds: float = 0.333333
  # Encoder frames per 30 s; windows are cut in frames: round(1500 * window_seconds / 30) = 17.
  frames_per_30s: int = 1500
  layer_norm_eps: float = 1e-12  # BERT's
  # BERT's hidden and attention-probability dropout, in train mode; Diffusion-ASR trains its
  # Q-Former with bert-base's 0.1 (`paper()`).
  dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"  # one of ATTENTION

  def __post_init__(self):
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"QFormerConfig.dropout={self.dropout}: expected 0 <= dropout < 1")
    _positive("QFormerConfig", encoder_width=self.encoder_width, out_dim=self.out_dim,
              hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
              intermediate_size=self.intermediate_size, num_queries=self.num_queries)
    if self.hidden_size % self.num_heads:
      raise ConfigError(f"QFormerConfig: hidden_size {self.hidden_size} not divisible by "
                        f"num_heads {self.num_heads}")
    if self.window_frames <= 0:
      raise ConfigError(f"QFormerConfig.window_seconds={self.window_seconds}: window of 0 frames")
    _check_dtype("QFormerConfig", "dtype", self.dtype)
    _check_dtype("QFormerConfig", "param_dtype", self.param_dtype)
    _check_attention("QFormerConfig", self.attention)

  @property
  def window_frames(self) -> int:
    return int(round(self.frames_per_30s * self.window_seconds / 30.0))

  def num_windows(self, frames: int) -> int:
    """Windows that fit in `frames` encoder frames; the remainder is dropped as torch unfold
    does."""
    return frames // self.window_frames

  @classmethod
  def paper(cls, encoder_width: int = 1280, out_dim: int = 4096, **kw) -> QFormerConfig:
    return cls(**{"encoder_width": encoder_width, "out_dim": out_dim, "dropout": 0.1, **kw})

  @classmethod
  def tiny_test(cls, encoder_width: int = 64, out_dim: int = 48, **kw) -> QFormerConfig:
    base = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    return cls(encoder_width=encoder_width, out_dim=out_dim, **{**base, **kw})


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 32.0
  dropout: float = 0.1
  targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

  def __post_init__(self):
    _positive("LoRAConfig", rank=self.rank)
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"LoRAConfig.dropout={self.dropout}: expected 0 <= dropout < 1")
    allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    bad = set(self.targets) - allowed
    if bad:
      raise ConfigError(f"LoRAConfig.targets: unknown {sorted(bad)}; allowed {sorted(allowed)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3.1 'llama3' RoPE frequency scaling."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """LLaMA-shaped transformer: LLaDA when `causal=False`, LLaMA (the AR baseline) when True.

  Projection names follow HF LLaMA (`q_proj`… `gate_proj`, `up_proj`, `down_proj`); LLaDA's own
  names (`ff_proj` = gate, `up_proj`, `ff_out` = down, `attn_out` = o) are mapped by the converter.
  """

  vocab_size: int = 126464
  d_model: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 32
  mlp_hidden: int = 12288
  head_dim: int | None = None  # default d_model // n_heads
  rope_theta: float = 500000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = False
  causal: bool = False
  max_seq_len: int = 4096
  mask_id: int = 126336
  eos_id: int = 126081
  pad_id: int = 126081  # LLaDA pads with EOS
  eot_id: int = 126348
  lora: LoRAConfig | None = None
  remat: str = "none"  # one of REMAT_POLICIES
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"  # one of ATTENTION

  def __post_init__(self):
    _positive("LMConfig", vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
              n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, mlp_hidden=self.mlp_hidden,
              max_seq_len=self.max_seq_len)
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ConfigError(f"LMConfig: d_model {self.d_model} not divisible by n_heads {self.n_heads}")
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(f"LMConfig: n_heads {self.n_heads} not a multiple of n_kv_heads "
                        f"{self.n_kv_heads}")
    if self.dim_per_head % 2:
      raise ConfigError(f"LMConfig: head_dim {self.dim_per_head} must be even for RoPE")
    _check_dtype("LMConfig", "dtype", self.dtype)
    _check_dtype("LMConfig", "param_dtype", self.param_dtype)
    _check_attention("LMConfig", self.attention)
    check_remat("LMConfig", self.remat)

  @property
  def dim_per_head(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

  @classmethod
  def llada_8b_instruct(cls, **kw) -> LMConfig:
    return cls(**kw)

  @classmethod
  def llama3_8b(cls, **kw) -> LMConfig:
    """Llama-3.1-8B(-Instruct), the Whisper-LLaMA baseline's LM."""
    base = dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                mlp_hidden=14336, rope_theta=500000.0, rope_scaling=RopeScaling(),
                tie_embeddings=False, causal=True, max_seq_len=8192, mask_id=-1,
                eos_id=128009, pad_id=128009, eot_id=128009)
    return cls(**{**base, **kw})

  @classmethod
  def smollm2_135m(cls, **kw) -> LMConfig:
    """SmolLM2-135M-Instruct; causal as released. `causal=False` + a mask id makes it a LLaDA."""
    base = dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                mlp_hidden=1536, rope_theta=100000.0, tie_embeddings=True, causal=True,
                max_seq_len=8192, mask_id=-1, eos_id=2, pad_id=2, eot_id=2)
    return cls(**{**base, **kw})

  @classmethod
  def tiny_test(cls, **kw) -> LMConfig:
    base = dict(vocab_size=128, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=96,
                rope_theta=10000.0, max_seq_len=256, mask_id=127, eos_id=1, pad_id=1, eot_id=2)
    return cls(**{**base, **kw})


@dataclasses.dataclass(frozen=True)
class WhisperLLaDAConfig:
  """Whisper encoder → window Q-Former → LM. With `lm.causal=True` this is Whisper-LLaMA."""

  whisper: WhisperConfig
  qformer: QFormerConfig
  lm: LMConfig
  prompt: str = "Transcribe the audio:"
  # None: the chat template's own default. LLaDA's template has none; SmolLM2's inserts a 20-token
  # one ("You are a helpful AI assistant named SmolLM…"), which "" replaces by an empty system turn.
  system_prompt: str | None = None

  def __post_init__(self):
    if self.qformer.encoder_width != self.whisper.d_model:
      raise ConfigError(f"qformer.encoder_width {self.qformer.encoder_width} != whisper.d_model "
                        f"{self.whisper.d_model}")
    if self.qformer.out_dim != self.lm.d_model:
      raise ConfigError(f"qformer.out_dim {self.qformer.out_dim} != lm.d_model {self.lm.d_model}")

  @classmethod
  def paper(cls, **lm_kw) -> WhisperLLaDAConfig:
    """Whisper-large-v3 + Q-Former + LLaDA-8B-Instruct + LoRA (q/k/v, r 8, α 32): the paper's
    model."""
    return cls(whisper=WhisperConfig.whisper_large_v3(), qformer=QFormerConfig.paper(),
               lm=LMConfig.llada_8b_instruct(lora=LoRAConfig(), **lm_kw))

  @classmethod
  def baseline(cls, **lm_kw) -> WhisperLLaDAConfig:
    """Whisper-large-v3 + Q-Former + Llama-3.1-8B + LoRA: the paper's Whisper-LLaMA baseline."""
    return cls(whisper=WhisperConfig.whisper_large_v3(), qformer=QFormerConfig.paper(),
               lm=LMConfig.llama3_8b(lora=LoRAConfig(), **lm_kw))

  @classmethod
  def tiny_test(cls, causal: bool = False, **lm_kw) -> WhisperLLaDAConfig:
    whisper = WhisperConfig.tiny_test()
    lm = LMConfig.tiny_test(causal=causal, lora=LoRAConfig(rank=4, alpha=8.0), **lm_kw)
    return cls(whisper=whisper,
               qformer=QFormerConfig.tiny_test(encoder_width=whisper.d_model, out_dim=lm.d_model),
               lm=lm)


KINDS: dict[str, type] = {"whisper": WhisperConfig, "qformer": QFormerConfig, "lm": LMConfig,
                          "whisper_llada": WhisperLLaDAConfig}


def kind_of(cfg) -> str:
  return next(k for k, c in KINDS.items() if type(cfg) is c)


def to_dict(cfg) -> dict:
  """Config → plain JSON-able dict, tagged with its kind (a checkpoint's config.json)."""
  return config_files.to_dict(cfg, kind=kind_of(cfg))


def from_dict(data: dict, where: str = "config"):
  """Inverse of `to_dict`; unknown fields are an error naming the field."""
  return config_files.from_dict(KINDS, data, where)


def save_json(cfg, path) -> None:
  config_files.save_json(cfg, path, kind=kind_of(cfg))


def load_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
    raise ConfigError(f"{path}: unreadable JSON: {e}") from None
  return from_dict(data, where=str(path))
