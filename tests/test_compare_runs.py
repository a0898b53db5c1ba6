"""tools/compare_runs.py, the check that two runs are the same: runs that differ only in times,
compile records and their own folders are the same; a changed hypothesis, metric, tensor, byte,
checkpoint step or a missing file is named."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from llada_jax.models import checkpoint
from llada_jax.models.config import WhisperConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def make_run(root: Path, *, seconds: float = 1.0, hyp: str = "a cat",
             loss: float = 0.5, scale: float = 1.0, steps=(2, 4), audio: bytes = b"RIFF-1",
             encoded: bytes = b"NUMPY-1", extra: bool = False) -> Path:
  """A run's shape in miniature: eval hypotheses and summary, training metrics, checkpoint
  steps, an exported model (a few weights × `scale`), an audio file, an encoder cache whose
  folder is named by a hash of the run's own path (as train.py names it), and a log."""
  (root / "eval" / "x").mkdir(parents=True)
  (root / "eval" / "x" / "hyps.jsonl").write_text(json.dumps(
      {"id": "u1", "ref": "A CAT", "hyp": hyp, "confidences": [0.5, 0.25],
       "seconds": seconds}) + "\n")
  (root / "eval" / "x" / "summary.json").write_text(json.dumps(
      {"wer": 0.5, "rtf": seconds / 9, "wall_seconds": 3 * seconds, "val": float("nan"),
       "checkpoint": str(root / "train" / "model"),
       "compiled_shapes": ["batch 8"] if seconds < 2 else []}))
  (root / "train").mkdir()
  (root / "train" / "metrics.jsonl").write_text(
      json.dumps({"step": 1, "loss": loss, "step_s": seconds, "tokens_per_s": 7 / seconds}) + "\n")
  for s in steps:
    (root / "train" / "checkpoints" / str(s)).mkdir(parents=True)
  (root / "train" / "train.log").write_text(f"step 1 took {seconds} s\n")
  (root / "corpus.flac").write_bytes(audio)
  key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
  (root / "encoder_cache" / key).mkdir(parents=True)
  (root / "encoder_cache" / key / "u1.npy").write_bytes(encoded)
  if extra:
    (root / "extra.txt").write_text("x")
  rng = np.random.default_rng(0)
  items = [(f"encoder.layers.{i}.kernel", rng.normal(size=(8, 4)).astype(np.float32) * scale)
           for i in range(3)]
  checkpoint.save(root / "train" / "model", WhisperConfig(), items)
  return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Run A, and run B that differs from it in times, compile records and its folder only."""
  tmp = tmp_path_factory.mktemp("runs")
  return tmp, make_run(tmp / "a"), make_run(tmp / "b", seconds=2.5)


def test_runs_that_differ_only_in_times_are_the_same(runs, capsys):
  _, a, b = runs
  assert compare_runs.main([str(a), str(b)]) == 0
  assert "the same" in capsys.readouterr().out


@pytest.mark.parametrize("change, named", [
    ({"hyp": "a hat"}, "eval/x/hyps.jsonl: [0].hyp: 'a cat' vs 'a hat'"),
    ({"loss": 0.25}, "train/metrics.jsonl: [0].loss: 0.5 vs 0.25"),
    ({"scale": 1.0 + 1e-6}, "train/model: 3 of 3 tensors differ"),
    ({"steps": (2,)}, "train/checkpoints: steps ['2', '4'] vs ['2']"),
    ({"audio": b"RIFF-2"}, "corpus.flac: the bytes differ"),
    ({"encoded": b"NUMPY-2"}, "encoder_cache/<key>/u1.npy: the bytes differ"),
    ({"extra": True}, "extra.txt: only in B"),
])
def test_each_difference_is_named(runs, change, named, capsys):
  tmp, a, _ = runs
  other = make_run(tmp / f"c{len(list(tmp.iterdir()))}", **change)
  assert compare_runs.main([str(a), str(other)]) == 1
  out = capsys.readouterr().out
  assert named in out and "1 difference(s)" in out, out


def test_a_missing_folder_exits_2(tmp_path, capsys):
  assert compare_runs.main([str(tmp_path / "nope"), str(tmp_path)]) == 2
  assert "nope: no such folder" in capsys.readouterr().err


def test_a_cache_filled_again_under_another_path_s_key_is_the_same(runs, tmp_path, capsys):
  """A run resumed from (or moved to) another folder holds its encoder cache under a second key
  with the same files: that is one cache. Keys with different content are still named."""
  import shutil

  _, a, _ = runs
  b = make_run(tmp_path / "b")
  (key,) = (b / "encoder_cache").iterdir()
  shutil.copytree(key, b / "encoder_cache" / "0123456789ab")
  assert compare_runs.main([str(a), str(b)]) == 0
  (b / "encoder_cache" / "0123456789ab" / "u1.npy").write_bytes(b"NUMPY-2")
  assert compare_runs.main([str(a), str(b)]) == 1
  out = capsys.readouterr().out
  assert "encoder_cache/<key>/u1.npy: only in A" in out
  assert "encoder_cache/0123456789ab/u1.npy: only in B" in out
