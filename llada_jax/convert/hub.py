"""Hugging Face Hub ids wherever a checkpoint is accepted.

    resolve_source("openai/whisper-large-v3@main")   # → the snapshot folder of what convert reads
    checkpoint("openai/whisper-large-v3")            # → a converted folder, converted once

A spec names the Hub when it reads `ORG/NAME[@REVISION]` and no local path of that name exists
(a local path always wins), or when it starts with `hf://` (the Hub, whatever lies on disk).
Resolution goes through `huggingface_hub` itself, so its cache (`HF_HUB_CACHE` / `HF_HOME`),
`HF_HUB_OFFLINE`, tokens and endpoint all apply; only the files the converter reads are fetched:
config.json, the tokenizer files, and one set of weights in the reader's order of preference
(a safetensors index and its shards, model.safetensors, a .bin index and its shards,
pytorch_model.bin; CTranslate2's model.bin; a repo's only .gguf), never the fp32 / flax / TF
copies many repos carry beside them.

`checkpoint` converts a Hub source of one model (Whisper, LLaDA, a LLaMA) into
`$LLADA_JAX_CONVERTED_DIR` (default ~/.cache/llada_jax/converted) under `ORG--NAME/COMMIT`, once:
the next call with the same commit loads from there. A Whisper-LLaDA is made of three sources
(`llada-jax convert --kind whisper_llada`), so it is not converted on the fly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from llada_jax.convert.source import TOKENIZER_FILE_NAMES, ConversionError, read_json

log = logging.getLogger(__name__)

PREFIX = "hf://"
CONVERTED_ENV = "LLADA_JAX_CONVERTED_DIR"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# Weight files in the readers' order of preference (`hf._WEIGHTS`, then CTranslate2's); an index's
# shards are read from the index itself.
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                 "pytorch_model.bin.index.json", "pytorch_model.bin", "model.bin")
# converted kind for a source's kind_hint (`llada_jax.convert.open_source`)
_KINDS = {"hf_whisper": "whisper", "ct2_whisper": "whisper", "llada": "llada",
          "hf_llama": "llama", "gguf_llama": "llama"}


@dataclasses.dataclass(frozen=True)
class HubId:
  repo: str  # ORG/NAME
  revision: str | None = None  # a branch, tag or commit; None: the default branch

  def __str__(self) -> str:
    return self.repo + (f"@{self.revision}" if self.revision else "")


def parse(spec: str | os.PathLike) -> HubId | None:
  """The Hub id `spec` names, or None for a local path (see the module docstring)."""
  text = os.fspath(spec)
  forced = text.startswith(PREFIX)
  if forced:
    text = text[len(PREFIX):]
  elif Path(text).expanduser().exists():
    return None
  repo, at, revision = text.partition("@")
  if not _REPO.fullmatch(repo) or (at and not revision):
    if forced:
      raise ConversionError(f"{spec}: expected {PREFIX}ORG/NAME[@REVISION]")
    return None
  return HubId(repo, revision or None)


def resolve_source(spec: str | os.PathLike) -> Path:
  """A source checkpoint spec → a local path: the path itself, or the Hub snapshot folder."""
  hub = parse(spec)
  return Path(spec).expanduser() if hub is None else snapshot(hub)


def snapshot(hub: HubId) -> Path:
  """The snapshot folder (`…/snapshots/COMMIT`) holding what the converter reads of `hub`."""
  folder = _download(hub, ["config.json"])  # resolves the revision to its commit
  pinned = HubId(hub.repo, folder.name)
  wanted = ["config.json", *TOKENIZER_FILE_NAMES, *_weights(_listing(pinned, folder), hub)]
  folder = _download(pinned, wanted)
  for index in [f for f in wanted if f.endswith(".index.json")]:
    shards = sorted(set(read_json(folder / index).get("weight_map", {}).values()))
    folder = _download(pinned, wanted + shards)
  return folder


def _listing(hub: HubId, folder: Path) -> list[str]:
  """The repo's files at the commit: the tree listing huggingface_hub caches with every download,
  else (offline, a cache written by an older huggingface_hub) the files the snapshot holds."""
  import huggingface_hub
  from huggingface_hub.errors import CachedRepoTreeNotFoundError

  try:
    return [f.path for f in huggingface_hub.get_cached_repo_tree(hub.repo, revision=hub.revision)]
  except CachedRepoTreeNotFoundError:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]


def _weights(files: list[str], hub: HubId) -> list[str]:
  top = {f for f in files if "/" not in f}  # the readers look at the top level only
  for name in _WEIGHT_FILES:
    if name in top:
      return [name]
  ggufs = sorted(f for f in top if f.endswith(".gguf"))
  if len(ggufs) == 1:
    return ggufs
  found = f"{len(ggufs)} .gguf files ({', '.join(ggufs[:6])})" if ggufs else sorted(top)[:20]
  raise ConversionError(f"{hub}: no weights the converter reads (model.safetensors[.index.json], "
                        f"pytorch_model.bin[.index.json], CTranslate2's model.bin or one .gguf); "
                        f"found {found}")


def _download(hub: HubId, patterns: list[str]) -> Path:
  """`snapshot_download` of `patterns`, its errors as ConversionErrors that say what to do."""
  import huggingface_hub
  from huggingface_hub import constants, errors

  try:
    return Path(huggingface_hub.snapshot_download(hub.repo, revision=hub.revision,
                                                  allow_patterns=patterns))
  except errors.IncompleteSnapshotError as e:
    raise ConversionError(f"{hub}: {e}") from None
  except errors.LocalEntryNotFoundError:
    where = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
      raise ConversionError(
          f"{hub}: not in the Hugging Face cache ({where}), or not all the files the converter "
          f"reads, and HF_HUB_OFFLINE is set: run the same command once with the Hub reachable "
          f"(HF_HUB_OFFLINE unset), or fetch it there with `hf download {hub.repo}` into this "
          f"cache") from None
    raise ConversionError(f"{hub}: the Hub cannot be reached and the Hugging Face cache "
                          f"({where}) does not hold it; check the network (or a proxy), "
                          f"then run again") from None
  except errors.RevisionNotFoundError:
    raise ConversionError(f"{hub}: the repo has no revision {hub.revision!r}") from None
  except errors.RepositoryNotFoundError:  # gated repos included
    raise ConversionError(
        f"{hub}: no such repo on the Hugging Face Hub, nor a local path of that name (a private "
        f"or gated repo needs `hf auth login` or HF_TOKEN)") from None
  except errors.HfHubHTTPError as e:
    raise ConversionError(f"{hub}: the Hub answered {e}") from None


# ---------------------------------------------------------------------------------------------
# Converted checkpoints from Hub ids.

def converted_root() -> Path:
  env = os.environ.get(CONVERTED_ENV)
  if env:
    return Path(env).expanduser()
  cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
  return cache / "llada_jax" / "converted"


def checkpoint(spec: str | os.PathLike) -> Path:
  """A converted-checkpoint spec → a local folder: the path itself, or a Hub source of one model
  converted (float32) into `converted_root()` the first time its commit is asked for."""
  hub = parse(spec)
  if hub is None:
    return Path(spec)
  home = converted_root() / hub.repo.replace("/", "--")
  if hub.revision and _COMMIT.fullmatch(hub.revision) and _complete(home / hub.revision):
    return home / hub.revision  # a pinned commit needs no Hub (nor its cache) once converted
  folder = snapshot(hub)
  out = home / folder.name
  if _complete(out):
    return out
  from llada_jax.convert import convert as conv
  from llada_jax.convert import open_source

  with open_source(folder) as source:
    kind = _KINDS.get(source.kind_hint)
  if kind is None:
    raise ConversionError(f"{hub}: a {source.kind_hint!r} checkpoint; a Hub id converts "
                          f"on the fly for a Whisper, LLaDA or LLaMA (a Whisper-LLaDA: convert "
                          f"it with `llada-jax convert --kind whisper_llada` and pass the folder)")
  log.info("converting %s (commit %s) → %s, once", hub, folder.name, out)
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
