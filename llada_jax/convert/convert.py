"""Checkpoint conversion: any supported source → a converted llada-jax checkpoint, and back.

`convert(kind, src, out)` streams tensors from a `Source` through a mapping table into orbax parts
(`checkpoint.PartWriter`); `export_torch(src, out)` writes safetensors + config in the source's own
naming, or for whisper_llada one .pth in the authors' layout (`diffusion_asr`). Configs are derived
from the source's config.json (or, for a Diffusion-ASR .pth, from tensor shapes and its stored
config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing as tp
from pathlib import Path

import numpy as np
from flax import nnx

from llada_jax.convert import diffusion_asr, open_source
from llada_jax.convert import mapping as maps
from llada_jax.convert.source import TOKENIZER_FILE_NAMES, ConversionError, Source
from llada_jax.models import checkpoint
from llada_jax.models.config import (
  LMConfig,
  RopeScaling,
  WhisperConfig,
  WhisperLLaDAConfig,
  save_json,
)

log = logging.getLogger(__name__)

KINDS = ("whisper", "llada", "llama", "whisper_llada")
_WHISPER_SOURCES = ("hf_whisper", "ct2_whisper")
_LLAMA_SOURCES = ("hf_llama", "gguf_llama")


def _get(cfg: dict, *names, default=None):
  for name in names:
    if cfg.get(name) is not None:
      return cfg[name]
  return default


def whisper_config(cfg: dict, dtype: str) -> WhisperConfig:
  return WhisperConfig(
      n_mels=cfg["num_mel_bins"], d_model=cfg["d_model"], encoder_layers=cfg["encoder_layers"],
      decoder_layers=cfg["decoder_layers"], encoder_heads=cfg["encoder_attention_heads"],
      decoder_heads=cfg["decoder_attention_heads"], encoder_ffn_dim=cfg["encoder_ffn_dim"],
      decoder_ffn_dim=cfg["decoder_ffn_dim"], vocab_size=cfg["vocab_size"],
      max_source_positions=cfg.get("max_source_positions", 1500),
      max_target_positions=cfg.get("max_target_positions", 448),
      decoder_start_token_id=cfg.get("decoder_start_token_id", 50257),
      eos_token_id=_first(cfg.get("eos_token_id", 50256)), dtype=dtype, param_dtype=dtype)


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


def llama_config(cfg: dict, dtype: str, *, causal: bool = True, mask_id: int | None = None
                 ) -> LMConfig:
  """transformers LlamaConfig dict → LMConfig (rope theta may sit under `rope_parameters`)."""
  rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
  theta = _get(cfg, "rope_theta", default=rope.get("rope_theta", 10000.0))
  scaling = None
  if rope.get("rope_type", rope.get("type")) == "llama3":
    scaling = RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                          high_freq_factor=rope["high_freq_factor"],
                          original_max_position_embeddings=rope["original_max_position_embeddings"])
  eos = _first(_get(cfg, "eos_token_id", default=2))
  head_dim = cfg.get("head_dim")
  if head_dim == cfg["hidden_size"] // cfg["num_attention_heads"]:
    head_dim = None  # the default, so configs compare equal to the presets
  # GGUF stores eps as float32 (1e-5 → 9.99999974e-06); 7 significant digits restore the intent.
  eps = float(f"{cfg.get('rms_norm_eps', 1e-5):.7g}")
  return LMConfig(
      vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
      n_heads=cfg["num_attention_heads"],
      n_kv_heads=_get(cfg, "num_key_value_heads", default=cfg["num_attention_heads"]),
      mlp_hidden=cfg["intermediate_size"], head_dim=head_dim, rope_theta=float(theta),
      rope_scaling=scaling, rms_norm_eps=eps,
      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), causal=causal,
      max_seq_len=cfg.get("max_position_embeddings", 4096),
      mask_id=-1 if mask_id is None else mask_id, eos_id=eos,
      pad_id=_first(_get(cfg, "pad_token_id", default=eos)), eot_id=eos,
      dtype=dtype, param_dtype=dtype)


def llada_config(cfg: dict, dtype: str) -> LMConfig:
  """GSAI-ML/LLaDA config.json (OLMo-style field names) → LMConfig."""
  d = cfg["d_model"]
  return LMConfig(
      vocab_size=_get(cfg, "embedding_size", "vocab_size"), d_model=d, n_layers=cfg["n_layers"],
      n_heads=cfg["n_heads"], n_kv_heads=_get(cfg, "n_kv_heads", default=cfg["n_heads"]),
      mlp_hidden=cfg["mlp_hidden_size"], rope_theta=float(cfg.get("rope_theta", 10000.0)),
      rms_norm_eps=cfg.get("rms_norm_eps", 1e-5), tie_embeddings=bool(cfg.get("weight_tying")),
      causal=False, max_seq_len=cfg.get("max_sequence_length", 4096),
      mask_id=cfg.get("mask_token_id", 126336), eos_id=cfg.get("eos_token_id", 126081),
      pad_id=cfg.get("pad_token_id", 126081), dtype=dtype, param_dtype=dtype)


def _lm_from_source(src: Source, kind: str, dtype: str, mask_id: int | None
                    ) -> tuple[LMConfig, maps.Mapping]:
  if src.kind_hint == "llada":
    if kind == "llama":
      raise ConversionError(f"{src.path}: a LLaDA checkpoint is bidirectional; use kind 'llada'")
    return llada_config(src.config, dtype), maps.LLADA
  if src.kind_hint in _LLAMA_SOURCES:
    causal = kind in ("llama",)
    if not causal and mask_id is None:
      raise ConversionError(f"{src.path}: turning a causal LLaMA into a bidirectional LLaDA needs "
                            "a mask token: pass mask_id")
    cfg = llama_config(src.config, dtype, causal=causal, mask_id=mask_id)
    table = maps.HF_LLAMA
    if cfg.tie_embeddings:  # some tied checkpoints still store the head: the same tensor twice
      table = table + maps.Mapping(rules=(), skip=(r"^lm_head\.weight$",))
    return cfg, table
  raise ConversionError(f"{src.path}: a {src.kind_hint!r} checkpoint is not an LM for kind "
                        f"{kind!r}")


@dataclasses.dataclass
class Plan:
  """What to write: the config, and (source, mapping, target-name filter) triples in order."""

  config: tp.Any
  steps: list[tuple[Source, maps.Mapping, tp.Callable[[str], bool]]]
  tokenizer: Source
  source_info: dict
  # The source whose tensors that the mapping skips are kept beside params/ (Diffusion-ASR .pth).
  extras: tuple[Source, maps.Mapping] | None = None


def plan(kind: str, src: str | Path, *, dtype: str = "float32", whisper: str | Path | None = None,
         llm: str | Path | None = None, trust_pickle: bool = False, mask_id: int | None = None,
         qformer_heads: int = 12, lora_alpha: float | None = None) -> Plan:
  """`lora_alpha`: LoRA α for a Diffusion-ASR .pth whose stored config has none (default 32)."""
  if kind not in KINDS:
    raise ConversionError(f"kind {kind!r}: expected one of {KINDS}")
  if dtype not in ("float32", "bfloat16"):
    raise ConversionError(f"dtype {dtype!r}: expected float32 or bfloat16")
  everything = lambda name: True  # noqa: E731
  source = open_source(src, trust_pickle=trust_pickle)
  if kind == "whisper":
    if source.kind_hint not in _WHISPER_SOURCES:
      raise ConversionError(f"{source.path}: kind 'whisper' needs a Whisper checkpoint, this looks "
                            f"like {source.kind_hint!r}")
    cfg = whisper_config(source.config, dtype)
    info = {"format": "hf_whisper", "kind_hint": source.kind_hint, "config": source.config}
    return Plan(cfg, [(source, maps.HF_WHISPER, everything)], source, info)
  if kind in ("llada", "llama"):
    cfg, table = _lm_from_source(source, kind, dtype, mask_id)
    fmt = "llada" if source.kind_hint == "llada" else "hf_llama"
    info = {"format": fmt, "kind_hint": source.kind_hint, "config": source.config}
    return Plan(cfg, [(source, table, everything)], source, info)
  # whisper_llada: the trained tensors of a Diffusion-ASR .pth over base Whisper and LLM
  # checkpoints.
  if source.kind_hint != "diffusion_asr":
    raise ConversionError(f"{source.path}: kind 'whisper_llada' needs a Diffusion-ASR training "
                          f"checkpoint (.pth), this looks like {source.kind_hint!r}")
  if whisper is None or llm is None:
    raise ConversionError("kind 'whisper_llada' needs the base checkpoints whisper and llm as "
                          "well as src")
  w_src, l_src = open_source(whisper), open_source(llm, trust_pickle=trust_pickle)
  if w_src.kind_hint not in _WHISPER_SOURCES:
    raise ConversionError(f"{w_src.path} (whisper): not a Whisper checkpoint "
                          f"({w_src.kind_hint})")
  w_cfg = whisper_config(w_src.config, dtype)
  lm_cfg, lm_table = _lm_from_source(l_src, "llada", dtype, mask_id)
  lora, lora_info = diffusion_asr.lora_config(source, lora_alpha)
  lm_cfg = dataclasses.replace(lm_cfg, lora=lora)
  q_cfg, q_info = diffusion_asr.qformer_config(source, w_cfg.d_model, lm_cfg.d_model, dtype,
                                               qformer_heads)
  cfg = WhisperLLaDAConfig(whisper=w_cfg, qformer=q_cfg, lm=lm_cfg)
  trained = diffusion_asr.TRAINED
  info = {"format": "diffusion_asr",
          "checkpoint": diffusion_asr.checkpoint_info(source, trained),
          "lora": lora_info, "qformer": q_info,
          "whisper": {"kind_hint": w_src.kind_hint, "config": w_src.config},
          "llm": {"format": "llada" if l_src.kind_hint == "llada" else "hf_llama",
                  "kind_hint": l_src.kind_hint, "config": l_src.config}}
  return Plan(cfg, [
      (w_src, maps.WHISPER_ENCODER_ONLY, lambda n: n.startswith("encoder.")),
      (l_src, lm_table.under("lm."), lambda n: n.startswith("lm.") and ".lora." not in n),
      (source, trained, diffusion_asr.is_trained),
  ], l_src, info, extras=(source, trained))


def _targets(config) -> dict[str, tuple[tuple[int, ...], tp.Any]]:
  model = checkpoint.abstract_model(config)
  kinds = nnx.Any(maps.BASE_WEIGHTS, nnx.LoRAParam)
  return maps.model_targets(model, kinds)


def convert(kind: str, src: str | Path, out: str | Path, *, overwrite: bool = False,
            part_bytes: int = checkpoint.PART_BYTES, **plan_kw) -> Plan:
  """Convert and write atomically; on any mismatch nothing is written and every problem is named.

  Returns the plan (its opened sources can be reused, e.g. by `--verify`)."""
  p = write(plan(kind, src, **plan_kw), out, overwrite=overwrite, part_bytes=part_bytes)
  log.info("converted %s → %s", src, out)
  return p


def write(p: Plan, out: str | Path, *, overwrite: bool = False,
          part_bytes: int = checkpoint.PART_BYTES) -> Plan:
  """`convert` for a plan whose sources are open already (a GGUF or torch file is read once)."""
  targets = _targets(p.config)
  # Check every source's names and shapes before the first byte is written; report them all.
  problems = []
  for source, table, keep in p.steps:
    try:
      maps.check(source, table, {n: t for n, t in targets.items() if keep(n)},
                 what=str(source.path))
    except maps.MappingError as e:
      problems.append(str(e))
  if problems:
    raise maps.MappingError("\n".join(problems))
  with checkpoint.atomic_dir(out, overwrite=overwrite) as tmp:
    save_json(p.config, tmp / "config.json")
    (tmp / "source.json").write_text(json.dumps(p.source_info, indent=2, default=str))
    writer = checkpoint.PartWriter(tmp / "params", part_bytes)
    for source, table, keep in p.steps:
      subset = {n: t for n, t in targets.items() if keep(n)}
      maps.convert(source, table, subset, writer.add, what=str(source.path))
    writer.close()
    if p.extras is not None:
      diffusion_asr.save_extras(tmp, *p.extras)
    p.tokenizer.save_tokenizer(tmp)
  return p


# ---------------------------------------------------------------------------------------------
# Export.

def _export_table(config, info: dict) -> tuple[maps.Mapping, dict]:
  if isinstance(config, WhisperConfig):
    return maps.HF_WHISPER, hf_whisper_json(config, info.get("config", {}))
  if isinstance(config, LMConfig):
    if info.get("format") == "llada":
      return maps.LLADA, llada_json(config, info.get("config", {}))
    return maps.HF_LLAMA, hf_llama_json(config, info.get("config", {}))
  raise ConversionError(f"export_torch: no export for a {type(config).__name__}")


def hf_whisper_json(c: WhisperConfig, base: dict) -> dict:
  return {**base, "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
          "num_mel_bins": c.n_mels, "d_model": c.d_model, "encoder_layers": c.encoder_layers,
          "decoder_layers": c.decoder_layers, "encoder_attention_heads": c.encoder_heads,
          "decoder_attention_heads": c.decoder_heads, "encoder_ffn_dim": c.encoder_ffn_dim,
          "decoder_ffn_dim": c.decoder_ffn_dim, "vocab_size": c.vocab_size,
          "max_source_positions": c.max_source_positions,
          "max_target_positions": c.max_target_positions,
          "decoder_start_token_id": c.decoder_start_token_id, "eos_token_id": c.eos_token_id,
          "tie_word_embeddings": True}


def hf_llama_json(c: LMConfig, base: dict) -> dict:
  rope = {"rope_type": "default", "rope_theta": c.rope_theta}
  if c.rope_scaling is not None:
    rope = {"rope_type": "llama3", "rope_theta": c.rope_theta,
            **dataclasses.asdict(c.rope_scaling)}
  base = {k: v for k, v in base.items() if k not in ("rope_scaling", "rope_parameters")}
  return {**base, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
          "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
          "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
          "intermediate_size": c.mlp_hidden, "head_dim": c.dim_per_head,
          "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_embeddings,
          "max_position_embeddings": c.max_seq_len, "rope_theta": c.rope_theta,
          "rope_parameters": rope, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id,
          "attention_bias": False, "mlp_bias": False}


def llada_json(c: LMConfig, base: dict) -> dict:
  return {**base, "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
          "n_kv_heads": c.n_kv_heads, "mlp_hidden_size": c.mlp_hidden,
          "embedding_size": c.vocab_size, "vocab_size": base.get("vocab_size", c.vocab_size),
          "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_norm_eps,
          "weight_tying": c.tie_embeddings, "max_sequence_length": c.max_seq_len,
          "mask_token_id": c.mask_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id}


def export_torch(src: str | Path, out: str | Path, *, overwrite: bool = False,
                 shard_bytes: int = 2 << 30) -> Path:
  """A converted (or trained) checkpoint → safetensors + config.json in the source naming.

  LoRA adapters, if any, are merged into their base weights first. A whisper_llada checkpoint
  goes to one `.pth` (`out`) in the authors' training-checkpoint layout instead: its trained
  Q-Former and LoRA only (see `diffusion_asr`); export the base Whisper and LLM from their own
  conversions.
  """
  from safetensors.numpy import save_file

  from llada_jax.models.transformer import merge_lora

  src = Path(src)
  config = checkpoint.read_config(src)
  if isinstance(config, WhisperLLaDAConfig):
    return diffusion_asr.export_pth(src, out, overwrite=overwrite)
  table, cfg_json = _export_table(config, checkpoint.read_source_info(src))
  model = checkpoint.load(src)
  if isinstance(config, LMConfig) and config.lora is not None:
    merge_lora(model)
  items = maps.export(maps.model_items(model), table, what=str(src))
  with checkpoint.atomic_dir(out, overwrite=overwrite) as tmp:
    shards, current, size, weight_map = [], {}, 0, {}
    for name, array in items:
      current[name] = np.ascontiguousarray(array)
      size += array.nbytes
      if size >= shard_bytes:
        shards.append(current)
        current, size = {}, 0
    if current:
      shards.append(current)
    for i, shard in enumerate(shards):
      file = ("model.safetensors" if len(shards) == 1
              else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
      save_file(shard, str(tmp / file), metadata={"format": "pt"})
      weight_map.update({n: file for n in shard})
    if len(shards) > 1:
      (tmp / "model.safetensors.index.json").write_text(json.dumps(
          {"metadata": {"total_size": sum(a.nbytes for s in shards for a in s.values())},
           "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(cfg_json, indent=2, default=str))
    for file in src.iterdir():
      if file.is_file() and file.name in TOKENIZER_FILE_NAMES + ("generation_config.json",):
        (tmp / file.name).write_bytes(file.read_bytes())
  return Path(out)
