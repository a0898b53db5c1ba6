"""Hub ids as checkpoints (`llada_jax.convert.hub`, `.converted`): the real huggingface_hub
resolution, offline (conftest sets HF_HUB_OFFLINE=1), against a cache each test lays out as
huggingface_hub writes it; nothing of the library is mocked, only its cache folder is pointed at
the test's."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
from support import convert_cli, whisper_tokenizer

from llada_jax import inference
from llada_jax.convert import converted, hub, open_source
from llada_jax.convert.source import ConversionError
from llada_jax.inference.errors import ModelError
from llada_jax.models import checkpoint

ROOT = Path(__file__).resolve().parents[1]
REPO = "tiny-org/whisper-tiny-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Files the repo holds on the Hub besides what the converter reads (openai/whisper-* carry such
# copies): listed in the cached tree, never downloaded, so a request for them would fail offline.
NOT_READ = ("pytorch_model.bin", "model.fp32-00001-of-00002.safetensors",
            "model.safetensors.index.fp32.json", "flax_model.msgpack", "generation_config.json")


def tiny_whisper(folder: Path) -> Path:
  """A random transformers Whisper that transcribes 30 s windows (1500 encoder positions), with a
  tokenizer."""
  torch.manual_seed(0)
  cfg = transformers.WhisperConfig(
      vocab_size=64, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
      max_source_positions=1500, max_target_positions=32, decoder_start_token_id=2,
      eos_token_id=1, pad_token_id=1)
  transformers.WhisperForConditionalGeneration(cfg).save_pretrained(folder)
  whisper_tokenizer(folder, cfg.vocab_size)
  return folder


def lay_out_cache(cache: Path, repo: str, commit: str, files: Path, *,
                  listed: tuple[str, ...] = ()) -> Path:
  """`files` as huggingface_hub's cache holds a download of `repo` at `commit` on main: content in
  blobs/, snapshots/COMMIT/NAME linking to them, refs/main naming the commit; with `listed`, also
  the tree listing (trees/COMMIT.json, as huggingface_hub caches it with every download) naming
  those files as well, though they were never downloaded."""
  storage = cache / ("models--" + repo.replace("/", "--"))
  snapshot = storage / "snapshots" / commit
  snapshot.mkdir(parents=True)
  (storage / "blobs").mkdir()
  tree = {}
  for f in sorted(p for p in files.iterdir() if p.is_file()):
    data = f.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (storage / "blobs" / digest).write_bytes(data)
    (snapshot / f.name).symlink_to(Path("..", "..", "blobs", digest))
    tree[f.name] = {"size": len(data), "blob_id": hashlib.sha1(data).hexdigest()}
  (storage / "refs").mkdir()
  (storage / "refs" / "main").write_text(commit)
  if listed:
    for name in listed:
      tree[name] = {"size": 1, "blob_id": "0" * 40}
    (storage / "trees").mkdir()
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(
        {"format_version": 1, "files": tree}))
  return storage


def params(folder: Path) -> dict[str, np.ndarray]:
  return {name: np.asarray(value) for name, value in checkpoint.iter_params(folder)}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
  """huggingface_hub's cache folder, in this test's tmp_path (it read HF_HUB_CACHE at import)."""
  cache = tmp_path / "hf-cache"
  cache.mkdir()
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  return cache


def test_specs_local_paths_win_hf_forces_the_hub(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert hub.parse("openai/whisper-large-v3") == hub.HubId("openai/whisper-large-v3")
  assert hub.parse("org/name@v1.0") == hub.HubId("org/name", "v1.0")
  for local in ("ckpt", "./org/name", "/abs/org/name", "a/b/c", "org/name@"):
    assert hub.parse(local) is None, local
  (tmp_path / "org" / "name").mkdir(parents=True)
  assert hub.parse("org/name") is None  # an existing folder of that name wins
  assert hub.parse("hf://org/name") == hub.HubId("org/name")
  with pytest.raises(ConversionError, match="hf://ORG/NAME"):
    hub.parse("hf://just-a-name")


def test_convert_cli_from_the_hub_cache_offline_equals_the_local_folder(tmp_path):
  src = tiny_whisper(tmp_path / "local")
  lay_out_cache(tmp_path / "hf-cache", REPO, COMMIT, src, listed=NOT_READ)
  assert convert_cli("--kind", "whisper", "--src", src, "--out", tmp_path / "from-local") == 0
  # tools/convert.py as a user runs it: huggingface_hub reads its variables at start-up
  env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
  run = subprocess.run([sys.executable, ROOT / "tools" / "convert.py", "--kind", "whisper",
                        "--src", REPO, "--out", tmp_path / "from-hub"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  want, got = params(tmp_path / "from-local"), params(tmp_path / "from-hub")
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for name in ("config.json", "tokenizer.json"):
    assert (tmp_path / "from-hub" / name).read_bytes() == (
        tmp_path / "from-local" / name).read_bytes()

  missing = subprocess.run([sys.executable, ROOT / "tools" / "convert.py", "--kind", "whisper",
                            "--src", "tiny-org/not-cached", "--out", tmp_path / "none"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert missing.returncode == 2
  assert "tiny-org/not-cached: not in the Hugging Face cache" in missing.stderr
  assert "HF_HUB_OFFLINE" in missing.stderr and "hf download tiny-org/not-cached" in missing.stderr
  assert not (tmp_path / "none").exists()


def test_revisions_and_only_what_the_converter_reads(tmp_path, hf_cache):
  src = tiny_whisper(tmp_path / "local")
  lay_out_cache(hf_cache, REPO, COMMIT, src, listed=NOT_READ)
  snapshot = hf_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
  for spec in (REPO, f"{REPO}@main", f"{REPO}@{COMMIT}", f"hf://{REPO}"):
    assert hub.resolve_source(spec) == snapshot, spec
  with open_source(REPO) as source:  # what `--src`, `--whisper` and `--llm` go through
    assert source.kind_hint == "hf_whisper" and source.path == snapshot
  with pytest.raises(ConversionError, match=f"{REPO}@v9: not in the Hugging Face cache"):
    hub.resolve_source(f"{REPO}@v9")
  # the weights listed in the tree but gone from the snapshot: offline, an error, not a half copy
  (snapshot / "model.safetensors").unlink()
  with pytest.raises(ConversionError, match=f"{REPO}@{COMMIT}: not in the Hugging Face cache"):
    hub.resolve_source(REPO)


def test_open_with_a_hub_id_converts_once_and_transcribes_as_the_local_conversion(
    tmp_path, hf_cache, monkeypatch):
  monkeypatch.setenv(converted.ENV, str(tmp_path / "converted"))
  src = tiny_whisper(tmp_path / "local")
  lay_out_cache(hf_cache, REPO, COMMIT, src)  # no tree listing: an older huggingface_hub's cache
  assert convert_cli("--kind", "whisper", "--src", src, "--out", tmp_path / "from-local") == 0
  audio = [np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1]
  settings = inference.WhisperSettings(max_new_tokens=4)
  want = inference.open(tmp_path / "from-local", settings, batch_size=1)(audio)
  got = inference.open(REPO, settings, batch_size=1)(audio)
  assert got == want and want[0], (got, want)

  folder = tmp_path / "converted" / REPO.replace("/", "--") / COMMIT
  index = folder / "params" / "index.json"
  before = (folder.stat().st_ino, index.stat().st_mtime_ns)
  assert converted.checkpoint(REPO) == folder
  assert (folder.stat().st_ino, index.stat().st_mtime_ns) == before  # not converted again
  assert sorted(p.name for p in folder.parent.iterdir()) == [COMMIT]  # no partial left behind
  # a pinned commit, once converted, needs neither the Hub nor its cache
  shutil.rmtree(hf_cache / ("models--" + REPO.replace("/", "--")))
  assert converted.checkpoint(f"{REPO}@{COMMIT}") == folder
  with pytest.raises(ModelError, match=f"{REPO}: not in the Hugging Face cache"):
    inference.open(REPO, settings, batch_size=1)
