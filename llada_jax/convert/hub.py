"""Hugging Face Hub ids wherever a checkpoint is accepted.

    resolve_source("openai/whisper-large-v3@main")   # → the snapshot folder of what convert reads

A spec names the Hub when it reads `ORG/NAME[@REVISION]` and no local path of that name exists
(a local path always wins), or when it starts with `hf://` (the Hub, whatever lies on disk).
Resolution goes through `huggingface_hub` itself, so its cache (`HF_HUB_CACHE` / `HF_HOME`),
`HF_HUB_OFFLINE`, tokens and endpoint all apply; only the files the converter reads are fetched:
config.json, the tokenizer files, and one set of weights in the reader's order of preference
(a safetensors index and its shards, model.safetensors, a .bin index and its shards,
pytorch_model.bin; CTranslate2's model.bin; a repo's only .gguf), never the fp32 / flax / TF
copies many repos carry beside them.

It imports only `source`, as the format modules do (`open_source` resolves through it);
`converted` turns a Hub id into a converted checkpoint on top of it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from llada_jax.convert.source import TOKENIZER_FILE_NAMES, ConversionError, read_json

PREFIX = "hf://"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
COMMIT = re.compile(r"[0-9a-f]{40}")
# Weight files in the readers' order of preference (`hf._WEIGHTS`, then CTranslate2's); an index's
# shards are read from the index itself.
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                 "pytorch_model.bin.index.json", "pytorch_model.bin", "model.bin")


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
