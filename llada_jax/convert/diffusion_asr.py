"""The authors' Diffusion-ASR training checkpoint (.pth) ↔ our Whisper-LLaDA.

Their `Runner.save_checkpoint` (SALMONN's) writes

    {"model": the state dict less every parameter that does not require grad (so: the trained
               parameters, plus all buffers),
     "optimizer": ..., "scheduler": ... or None, "scaler": ... or None,
     "config": the run's OmegaConf as a dict, {"model": {"lora_rank", "lora_alpha",
               "lora_dropout", "second_per_window", "second_stride", ...}, "datasets", "run"},
     "epoch": int}

and their `inference.py` (and `train.py`, to resume) read `ckpt["model"]` with
`load_state_dict(..., strict=False)` into a model whose frozen Whisper and LLaDA come from their
own paths. The trained tensors are `speech_query_tokens`, the Q-Former `adapter.*` (a whole BERT
LM-head model, of which only the query path runs), `linear_proj.*` and PEFT's LoRA on LLaDA's
q/k/v, `llada.base_model.model.model.transformer.blocks.{i}.{q,k,v}_proj.lora_{A,B}.default.weight`.

Import (`convert --kind whisper_llada`): sizes come from the tensor shapes, LoRA r from the A/B
shapes; LoRA α (and dropout) from the stored config's `model.lora_alpha` when the file has one,
else `--lora-alpha` (32, the paper's, when not given); source.json records which. The tensors the
model does not use (`mapping.DIFFUSION_ASR_QFORMER.skip`) are kept, as stored, in
`source_extra.safetensors` beside params/; source.json keeps the file's key order, its tied names
and the stored dtype of every mapped tensor that is not float32.

Export (`--export-torch --out x.pth`): the trained tensors under their names and stored dtypes
(float32 for a model trained here), the kept tensors and ties added back, in the file's order. A
converted .pth therefore comes back with the same keys and byte-identical tensors, as long as the
conversion's --dtype holds the stored values exactly (float32 always does). optimizer, scheduler
and scaler are None (their runner skips a None state on resume; the optimizer state of a .pth is
not carried); config is the stored one, or one written from ours; epoch the stored one, else 0.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import re
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import nnx

from llada_jax.convert import mapping as maps
from llada_jax.convert import torch_file
from llada_jax.convert.source import ConversionError, Source, numpy_to_torch
from llada_jax.models import checkpoint
from llada_jax.models.config import LoRAConfig, QFormerConfig, WhisperLLaDAConfig

log = logging.getLogger(__name__)

EXTRA_FILE = "source_extra.safetensors"
# Our trained weights: the projector and the LM's LoRA adapters, in their naming.
TRAINED = maps.DIFFUSION_ASR_QFORMER.under("projector.") + maps.DIFFUSION_ASR_LORA.under("lm.")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj")  # their LoraConfig's target_modules
DEFAULT_LORA_ALPHA = 32.0  # the paper's (their configs/config.yaml)
# What their WhisperLLaDA builds whatever the checkpoint holds: bert-base-uncased's sizes with two
# layers and four queries, and Linear(768 → 4096) into LLaDA-8B.
THEIR_QFORMER = {"hidden_size": 768, "num_heads": 12, "intermediate_size": 3072, "num_layers": 2,
                 "num_queries": 4, "layer_norm_eps": 1e-12, "out_dim": 4096,
                 "dropout": 0.1}  # bert-base's hidden and attention-probability dropout
# Their state dict's order: WhisperLLaDA's own parameter first, then its modules in the order
# they are created.
_SECTIONS = ("speech_query_tokens", "llada.", "adapter.", "linear_proj.")
_LAYER = re.compile(r"\.(?:layer|blocks)\.(\d+)\.")


def is_trained(name: str) -> bool:
  """Whether one of our parameter names is in their checkpoint (projector or LoRA)."""
  return name.startswith("projector.") or ".lora." in name


def stored_settings(config: dict) -> dict:
  """Their stored run config's `model` section (the dict itself where it is flat)."""
  model = config.get("model")
  return model if isinstance(model, dict) else config


# ---------------------------------------------------------------------------------------------
# Import.

def qformer_config(src: Source, encoder_width: int, out_dim: int, dtype: str, num_heads: int
                   ) -> tuple[QFormerConfig, dict]:
  """Q-Former sizes from the tensor shapes, window from the stored config.

  Every size has a fallback so that a file missing some tensors still yields a config, and the
  mapping check then names every missing tensor instead of this function the first one."""
  keys = set(src.keys())

  def dim(candidates, axis):
    return next((src.shape(n)[axis] for n in candidates if n in keys), None)

  layers = sorted({int(m.group(1)) for k in keys
                   if k.startswith("adapter.bert.") and (m := _LAYER.search(k))})
  hidden = dim(("speech_query_tokens", "linear_proj.weight",
                "adapter.bert.embeddings.LayerNorm.weight"), -1) or THEIR_QFORMER["hidden_size"]
  queries = dim(("speech_query_tokens",), 1) or THEIR_QFORMER["num_queries"]
  layer = "adapter.bert.encoder.layer"
  intermediate = (dim([f"{layer}.{i}.intermediate_query.dense.weight" for i in layers], 0)
                  or dim([f"{layer}.{i}.output_query.dense.weight" for i in layers], 1)
                  or 4 * hidden)
  settings = stored_settings(src.config)
  window, stride = settings.get("second_per_window"), settings.get("second_stride")
  if window is not None and stride is not None and float(window) != float(stride):
    raise ConversionError(f"{src.path}: the stored config has second_per_window {window} and "
                          f"second_stride {stride}; our Q-Former cuts non-overlapping windows")
  window_seconds = float(window) if window is not None else QFormerConfig.window_seconds
  cfg = QFormerConfig(encoder_width=encoder_width, out_dim=out_dim, hidden_size=hidden,
                      num_layers=layers[-1] + 1 if layers else THEIR_QFORMER["num_layers"],
                      num_heads=num_heads, intermediate_size=intermediate, num_queries=queries,
                      window_seconds=window_seconds, dropout=THEIR_QFORMER["dropout"],
                      dtype=dtype, param_dtype=dtype)
  info = {"window_seconds": window_seconds,
          "window_from": "checkpoint config" if window is not None else "default",
          "num_heads": num_heads, "num_heads_from": "--qformer-heads"}
  return cfg, info


def lora_config(src: Source, alpha: float | None) -> tuple[LoRAConfig | None, dict]:
  """LoRA settings: r from the A/B shapes, α and dropout from the stored config, else `alpha`
  (`--lora-alpha`), else 32. A stored rank that contradicts the tensors, or an `alpha` that
  contradicts the stored one, is an error."""
  pattern = re.compile(r"\.(\w+_proj)\.lora_([AB])\.")
  targets, ranks = set(), []
  for name in src.keys():
    m = pattern.search(name)
    if m:
      targets.add(m.group(1))
      ranks.append((m.group(2), src.shape(name)[0 if m.group(2) == "A" else -1]))
  if not ranks:
    return None, {}
  # The first A's (or, with no A, B's) rank; any other rank is a shape error the check reports.
  rank = next((r for ab, r in ranks if ab == "A"), ranks[0][1])
  settings = stored_settings(src.config)
  stored_rank, stored_alpha = settings.get("lora_rank"), settings.get("lora_alpha")
  if stored_rank is not None and int(stored_rank) != rank:
    raise ConversionError(f"{src.path}: the stored config's lora_rank is {stored_rank} but the "
                          f"LoRA tensors have rank {rank}")
  if stored_alpha is not None:
    if alpha is not None and float(alpha) != float(stored_alpha):
      raise ConversionError(f"{src.path}: lora_alpha {alpha} contradicts the stored config's "
                            f"lora_alpha {stored_alpha}")
    value, source = float(stored_alpha), "checkpoint config"
  elif alpha is not None:
    value, source = float(alpha), "--lora-alpha"
  else:
    value, source = DEFAULT_LORA_ALPHA, "default"
  dropout = settings.get("lora_dropout")
  cfg = LoRAConfig(rank=rank, alpha=value,
                   dropout=LoRAConfig.dropout if dropout is None else float(dropout),
                   targets=tuple(sorted(targets & set(LORA_TARGETS))))
  info = {"rank": rank, "rank_from": "tensors", "alpha": value, "alpha_from": source,
          "dropout": cfg.dropout, "dropout_from": "default" if dropout is None
          else "checkpoint config"}
  return cfg, info


def checkpoint_info(src: Source, mapping: maps.Mapping) -> dict:
  """What export needs to write the file back whole (kept in source.json)."""
  return {"path": str(src.path), "entries": src.metadata.get("entries"),
          "epoch": src.metadata.get("epoch"), "config": src.config,
          "keys": list(src.metadata.get("order", src.keys())), "aliases": dict(src.aliases),
          "dtypes": {n: str(src.dtype(n)) for n in src.keys()
                     if not mapping.skipped(n) and src.dtype(n) != np.float32}}


def save_extras(folder: Path, src: Source, mapping: maps.Mapping) -> list[str]:
  """Write the source tensors that `mapping` skips, as stored, to `folder/EXTRA_FILE`."""
  from safetensors.numpy import save_file

  names = [n for n in src.keys() if mapping.skipped(n)]
  if names:
    save_file({n: src.get(n) for n in names}, str(folder / EXTRA_FILE),
              metadata={"format": "pt", "source": str(src.path)})
  return names


# ---------------------------------------------------------------------------------------------
# Export.

def _numpy_dtype(name: str) -> np.dtype:
  return np.dtype(getattr(ml_dtypes, name, name))  # bfloat16 and float8 live in ml_dtypes


def _their_order(name: str) -> tuple[int, int, int]:
  section = next((i for i, p in enumerate(_SECTIONS) if name.startswith(p)), len(_SECTIONS))
  m = _LAYER.search(name)
  rules = maps.DIFFUSION_ASR_QFORMER.rules + maps.DIFFUSION_ASR_LORA.rules
  rule = next((i for i, r in enumerate(rules) if r.source_re.match(name)), len(rules))
  return section, int(m.group(1)) if m else -1, rule


def _number(x: float) -> float | int:
  return int(x) if float(x).is_integer() else x


def their_config(config: WhisperLLaDAConfig, info: dict, stored: dict) -> dict:
  """The checkpoint's `config` entry: the stored one with our LoRA and window settings, or (for
  a model trained here) just those, in their `model` section's names."""
  lora, window = config.lm.lora, _number(config.qformer.window_seconds)
  ours = {"lora": lora is not None, "second_per_window": window, "second_stride": window}
  if lora is not None:
    ours.update(lora_rank=lora.rank, lora_alpha=_number(lora.alpha), lora_dropout=lora.dropout)
  base = copy.deepcopy(stored.get("config") or {})
  if not base:
    ours.update(task_prompt=config.prompt, gen_len=int(info.get("response_len", 128)))
  model = base.get("model") if isinstance(base.get("model"), dict) else {}
  for key, value in ours.items():
    if model.get(key) != value:
      model[key] = value
  return {**base, "model": model}


def _check_exportable(config, src: Path, out: Path) -> None:
  if not isinstance(config, WhisperLLaDAConfig):
    raise ConversionError(f"{src}: not a whisper_llada checkpoint")
  if config.lm.causal:
    raise ConversionError(f"{src}: a causal Whisper-LLaMA; the authors' checkpoint layout is for "
                          "their Whisper-LLaDA (a bidirectional LLaDA)")
  if out.suffix.lower() not in torch_file.SUFFIXES:
    raise ConversionError(f"out {out}: a whisper_llada checkpoint exports to one torch file in "
                          f"the authors' layout; name it {' or '.join(torch_file.SUFFIXES)}")
  lora = config.lm.lora
  if lora is not None and set(lora.targets) - set(LORA_TARGETS):
    raise ConversionError(f"{src}: LoRA on {sorted(set(lora.targets) - set(LORA_TARGETS))}: the "
                          f"authors' model has LoRA on {', '.join(LORA_TARGETS)} only")
  q = config.qformer
  differs = [f"{k} {getattr(q, k)} (theirs {v})" for k, v in THEIR_QFORMER.items()
             if getattr(q, k) != v]
  if differs:
    log.warning("%s: their WhisperLLaDA builds its Q-Former with bert-base sizes; this export "
                "loads only into one built with the same sizes: %s", src, ", ".join(differs))


def export_pth(src: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
  """A whisper_llada checkpoint (converted or trained here) → their training-checkpoint `.pth`."""
  import torch
  from safetensors.numpy import load_file

  src, out = Path(src), Path(out).expanduser().absolute()
  config = checkpoint.read_config(src)
  _check_exportable(config, src, out)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
  info = checkpoint.read_source_info(src)
  stored = info.get("checkpoint", {}) if info.get("format") == "diffusion_asr" else {}

  kinds = nnx.Any(maps.BASE_WEIGHTS, nnx.LoRAParam)
  wanted = sorted(n for n in maps.model_targets(checkpoint.abstract_model(config), kinds)
                  if is_trained(n))
  arrays = dict(checkpoint.iter_params(src, keep=set(wanted).__contains__))
  missing = [n for n in wanted if n not in arrays]
  if missing:
    raise checkpoint.CheckpointError(f"{src}: checkpoint does not fit its config: missing "
                                     f"{missing}")
  dtypes = stored.get("dtypes", {})
  state = {}
  for name, array in maps.export(((n, arrays[n]) for n in wanted), TRAINED, what=str(src)):
    dtype = _numpy_dtype(dtypes.get(name, "float32"))
    state[name] = numpy_to_torch(np.asarray(array).astype(dtype, copy=False))
  if (src / EXTRA_FILE).is_file():
    state.update({n: numpy_to_torch(a) for n, a in load_file(str(src / EXTRA_FILE)).items()})
  for alias, name in stored.get("aliases", {}).items():
    if name in state:  # the same tensor: torch.save writes the tie back as one storage
      state[alias] = state[name]
  position = {n: i for i, n in enumerate(stored.get("keys", []))}
  order = sorted(state, key=lambda n: (position.get(n, len(position)), _their_order(n)))

  payload = {"model": collections.OrderedDict((n, state[n]) for n in order),
             "optimizer": None, "scheduler": None, "config": their_config(config, info, stored),
             "scaler": None, "epoch": stored.get("epoch") or 0}
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
  try:
    torch.save(payload, tmp)
    os.replace(tmp, out)
  finally:
    tmp.unlink(missing_ok=True)
  log.info("exported %s → %s (%d tensors)", src, out, len(order))
  return out
