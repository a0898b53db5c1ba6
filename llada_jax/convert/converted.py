"""Converted checkpoints for Hub ids: where a converted checkpoint is taken (eval, transcribe,
serve, `inference.open`), a Hub id of one model's source is converted once and loaded from a cache.

    checkpoint("openai/whisper-large-v3")   # → …/converted/openai--whisper-large-v3/COMMIT

The cache is `$LLADA_JAX_CONVERTED_DIR` (default ~/.cache/llada_jax/converted), one folder per
repo and commit (`ORG--NAME/COMMIT`), written at float32. A Whisper, a LLaDA or a LLaMA converts on
the fly; a Whisper-LLaDA is made of three sources (a Diffusion-ASR .pth over its Whisper and LLM),
so it stays a folder converted beforehand. It sits on top of `hub` (resolution) and `convert`.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from llada_jax.convert import convert as conv
from llada_jax.convert import hub, open_source
from llada_jax.convert.source import ConversionError

log = logging.getLogger(__name__)

ENV = "LLADA_JAX_CONVERTED_DIR"
# the kind to convert a source to, by its kind_hint (`open_source`)
KINDS = {"hf_whisper": "whisper", "ct2_whisper": "whisper", "llada": "llada",
         "hf_llama": "llama", "gguf_llama": "llama"}


def root() -> Path:
  env = os.environ.get(ENV)
  if env:
    return Path(env).expanduser()
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
  return cache / "llada_jax" / "converted"


def checkpoint(spec: str | os.PathLike) -> Path:
  """A converted-checkpoint spec → a local folder: the path itself, or a Hub source of one model
  converted into `root()` the first time its commit is asked for."""
  hub_id = hub.parse(spec)
  if hub_id is None:
    return Path(spec)
  home = root() / hub_id.repo.replace("/", "--")
  pinned = bool(hub_id.revision and hub.COMMIT.fullmatch(hub_id.revision))
  if pinned and _complete(home / str(hub_id.revision)):
    return home / str(hub_id.revision)  # a converted commit needs neither the Hub nor its cache
  folder = hub.snapshot(hub_id)
  out = home / folder.name
  if _complete(out):
    return out
  with open_source(folder) as source:
    kind = KINDS.get(source.kind_hint)
  if kind is None:
    raise ConversionError(f"{hub_id}: a {source.kind_hint!r} checkpoint; a Hub id is converted "
                          f"on the fly for a Whisper, a LLaDA or a LLaMA (a Whisper-LLaDA: "
                          f"convert its parts first, kind whisper_llada, and pass that folder)")
  log.info("converting %s (commit %s) → %s, once", hub_id, folder.name, out)
  # Several processes may convert at once (eval over hosts): each into its own folder, then a
  # rename, which fails for all but the first; the others drop theirs.
  partial = home / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
  conv.convert(kind, folder, partial)
  try:
    partial.rename(out)
  except OSError:
    shutil.rmtree(partial, ignore_errors=True)
    if not _complete(out):
      raise
  return out


def _complete(folder: Path) -> bool:
  return (folder / "params" / "index.json").is_file() and (folder / "config.json").is_file()
