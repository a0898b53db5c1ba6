"""`open`: the transcriber a checkpoint and its settings ask for.

    t = llada_jax.inference.open("ckpt/whisper-llada", LLaDASettings.paper("semi_ar"))
    texts = t(["a.flac", "b.flac"])

It sits above the transcribers it builds (`whisper`, `llada`), which sit above their base class
(`transcriber`): no module of the package imports one that imports it back.
"""

from __future__ import annotations

import os
from pathlib import Path

from llada_jax.inference.errors import ModelError
from llada_jax.inference.llada import LLaDASettings, LLaDATranscriber
from llada_jax.inference.transcriber import Transcriber
from llada_jax.inference.whisper import WhisperSettings, WhisperTranscriber
from llada_jax.models import checkpoint as ckpt
from llada_jax.models.config import WhisperConfig
from llada_jax.parallel.placement import Placement


def local_checkpoint(spec: str | os.PathLike) -> Path:
  """A converted checkpoint's folder: `spec` itself, or a Hub id converted once (a ModelError
  naming the repo and what to do when that cannot be done)."""
  from llada_jax.convert import converted
  from llada_jax.convert.mapping import MappingError
  from llada_jax.convert.source import ConversionError

  try:
    return converted.checkpoint(spec)
  except (ConversionError, MappingError, ckpt.CheckpointError) as e:
    raise ModelError(str(e)) from e


def open(checkpoint: str | os.PathLike, settings: WhisperSettings | LLaDASettings | None = None,
         *, batch_size: int = 16, per_device_batch: int | None = None, mesh=None,
         rules="full_fsdp", dtype="auto", attention: str | None = None,
         merge_lora: bool = True, quantize: str = "none") -> Transcriber:
  """The transcriber the settings ask for: Whisper (`WhisperSettings`) or a Whisper-LLaDA /
  Whisper-LLaMA (`LLaDASettings`); a checkpoint of another kind is a ModelError naming it.
  `settings=None` takes the defaults for the checkpoint's kind.

  `mesh`: (data, fsdp, tensor) sizes (one may be -1), a `jax.sharding.Mesh` or a `Placement`;
  default one device (every device on the data axis with several processes). `rules`: a sharding
  preset name (`sharding.PRESETS`) or a ShardingConfig. `batch_size`: rows per step over the whole
  mesh, or `per_device_batch` × the data-parallel ways. `dtype`: compute dtype ("auto": bfloat16
  on accelerators, the checkpoint's own on CPU). `attention`: the attention kernel
  (configs.ATTENTION; None: the checkpoint's). `merge_lora`: fold LoRA adapters into their kernels
  once at load. `quantize`: "int8" stores every linear kernel and input token table as int8
  with one scale per output channel and 128 inputs, the output head left float (weight-only,
  `models.quantize`; needs `merge_lora`). A mesh or batch that does not fit is a
  PlacementError naming the numbers, raised before the checkpoint is read.

  `checkpoint` may be a Hub id of a Whisper (`openai/whisper-large-v3[@REVISION]`): it is
  converted once into a local cache and loaded from there (`convert.converted`)."""
  from llada_jax.models.quantize import check_quantize

  quantize = check_quantize(quantize)
  placement = mesh if isinstance(mesh, Placement) else Placement.create(mesh, rules)
  batch_size = placement.global_batch(batch_size, per_device_batch)
  checkpoint = local_checkpoint(checkpoint)
  if settings is None:
    whisper = isinstance(ckpt.read_config(checkpoint), WhisperConfig)
    settings = WhisperSettings() if whisper else LLaDASettings()
  kw = dict(batch_size=batch_size, placement=placement, dtype=dtype, attention=attention,
            merge_lora=merge_lora, quantize=quantize)
  if isinstance(settings, WhisperSettings):
    return WhisperTranscriber(checkpoint, settings, **kw)
  return LLaDATranscriber(checkpoint, settings, **kw)
