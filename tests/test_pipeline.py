"""grain pipeline over a synthetic LibriSpeech folder and its tfds ArrayRecord copy."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from llada_jax.data import librispeech as ls
from llada_jax.data import pipeline as pl
from llada_jax.data import tfds_librispeech as tl
from llada_jax.data.audio import load_audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

CFG = pl.PipelineConfig.seconds((2, 4, 6, 10), batch_size=3, seed=5, num_threads=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("pl") / "corpus"
  subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), "--out", str(out),
                  "--num-train", "22", "--num-dev", "2", "--num-test", "2", "--seed", "7",
                  "--jobs", "2"], check=True, capture_output=True)
  return out / "train-clean"


@pytest.fixture(scope="module")
def utterances(corpus):
  return {u.id: u for u in ls.scan_librispeech(corpus).utterances}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x["ids"] == y["ids"] and x["step"] == y["step"]
    np.testing.assert_array_equal(x["audio"], y["audio"])
    np.testing.assert_array_equal(x["valid"], y["valid"])


def test_one_epoch_covers_every_utterance_once(corpus, utterances):
  data = pl.make_batches(corpus, CFG, process_index=0, process_count=1)
  batches = list(data)
  assert len(batches) == data.batches_per_epoch == len(data)
  seen = []
  widths = set()
  for b in batches:
    width = b["audio"].shape[1]
    widths.add(width)
    assert b["audio"].shape == (3, width) and width in CFG.buckets
    assert b["audio"].dtype == np.float32 and b["valid"].dtype == bool
    assert len(b["ids"]) == len(b["text"]) == 3 and b["errors"] == []
    for r in range(3):
      if not b["valid"][r]:
        assert b["ids"][r] == "" and b["audio_len"][r] == 0 and not b["audio"][r].any()
        continue
      u = utterances[b["ids"][r]]
      ref = load_audio(u.path)
      n = b["audio_len"][r]
      assert n == ref.shape[0] <= width
      # Smallest bucket that fits: the next smaller one would be too short.
      smaller = [w for w in CFG.buckets if w < width]
      assert not smaller or n > smaller[-1]
      np.testing.assert_array_equal(b["audio"][r, :n], ref)
      assert not b["audio"][r, n:].any()
      assert b["text"][r] == u.text and b["speaker"][r] == u.speaker
      seen.append(b["ids"][r])
  assert sorted(seen) == sorted(utterances)
  assert len(widths) > 1  # the corpus spans several buckets
  # Only a bucket's last batch is partial.
  assert sum(not b["valid"].all() for b in batches) <= len(CFG.buckets)


def test_seeded_shuffle_is_deterministic(corpus):
  a = list(pl.make_batches(corpus, CFG, process_index=0, process_count=1))
  b = list(pl.make_batches(corpus, CFG, process_index=0, process_count=1))
  _same(a, b)
  other = pl.PipelineConfig.seconds((2, 4, 6, 10), batch_size=3, seed=6)
  c = list(pl.make_batches(corpus, other, process_index=0, process_count=1))
  assert [x["ids"] for x in a] != [x["ids"] for x in c]


def test_two_hosts_split_every_global_batch(corpus, utterances):
  hosts = [list(pl.make_batches(corpus, CFG, process_index=h, process_count=2)) for h in (0, 1)]
  assert len(hosts[0]) == len(hosts[1])
  ids = []
  for b0, b1 in zip(*hosts):
    assert b0["audio"].shape == b1["audio"].shape  # same step, same shape on every host
    ids += [i for b in (b0, b1) for i, v in zip(b["ids"], b["valid"]) if v]
  assert sorted(ids) == sorted(utterances)


def test_resume_from_saved_state(corpus):
  cfg = pl.PipelineConfig.seconds((2, 4, 6, 10), batch_size=3, seed=5, num_epochs=2)
  data = pl.make_batches(corpus, cfg, process_index=0, process_count=1)
  assert len(data) == 2 * data.batches_per_epoch
  it = data.iterator()
  k = data.batches_per_epoch - 2
  _take(it, k)
  state = it.get_state()
  expected = _take(it, 4)  # runs across the epoch boundary
  assert {x["epoch"] for x in expected} == {0, 1}

  fresh = pl.make_batches(corpus, cfg, process_index=0, process_count=1).iterator()
  fresh.set_state(state)
  _same(_take(fresh, 4), expected)


def test_epochs_reshuffle_but_cover_the_same_set(corpus):
  cfg = pl.PipelineConfig.seconds((2, 4, 6, 10), batch_size=3, seed=5, num_epochs=2)
  data = pl.make_batches(corpus, cfg, process_index=0, process_count=1)
  batches = list(data)
  per_epoch = [[i for b in batches if b["epoch"] == e for i, v in zip(b["ids"], b["valid"]) if v]
               for e in (0, 1)]
  assert sorted(per_epoch[0]) == sorted(per_epoch[1]) and per_epoch[0] != per_epoch[1]


def test_bad_utterances_become_error_records(corpus, tmp_path, utterances):
  split = tmp_path / "train-clean"
  shutil.copytree(corpus, split)
  ids = sorted(utterances)
  u_trunc, u_text = utterances[ids[0]], utterances[ids[1]]
  trunc = split / os.path.relpath(u_trunc.path, corpus)
  data = trunc.read_bytes()
  trunc.write_bytes(data[:len(data) // 2])  # header intact: fails only when decoded
  (split / os.path.relpath(u_text.path, corpus)).write_text("not audio")  # fails at planning

  batches = pl.make_batches(split, CFG, process_index=0, process_count=1)
  assert [e.id for e in batches.errors] == [u_text.id]
  out = list(batches)
  errors = [e for b in out for e in b["errors"]]
  assert [e.id for e in errors] == [u_trunc.id] and errors[0].path == str(trunc)
  assert "truncated" in errors[0].reason or "not readable" in errors[0].reason
  valid = [i for b in out for i, v in zip(b["ids"], b["valid"]) if v]
  assert sorted(valid) == sorted(set(ids) - {u_trunc.id, u_text.id})


def test_too_long_trim_or_drop(corpus, utterances):
  lengths = {i: load_audio(u.path).shape[0] for i, u in utterances.items()}
  cap = int(np.median(list(lengths.values())))
  longer = {i for i, n in lengths.items() if n > cap}
  trim = pl.make_batches(corpus, pl.PipelineConfig(buckets=(cap // 2, cap), batch_size=4),
                         process_index=0, process_count=1)
  out = list(trim)
  assert all(b["audio"].shape[1] in (cap // 2, cap) for b in out)
  got = {i: n for b in out for i, n, v in zip(b["ids"], b["audio_len"], b["valid"]) if v}
  assert set(got) == set(utterances) and all(got[i] == cap for i in longer)

  drop = pl.make_batches(corpus, pl.PipelineConfig(buckets=(cap // 2, cap), batch_size=4,
                                                   too_long="drop"),
                         process_index=0, process_count=1)
  kept = {i for b in drop for i, v in zip(b["ids"], b["valid"]) if v}
  assert kept == set(utterances) - longer
  assert {e.id for e in drop.errors} == longer


def test_tfds_source_gives_the_same_batches(corpus, tmp_path):
  tl.prepare(corpus, tmp_path)  # a single split folder: the split is named after it
  from_tfds = list(pl.make_batches("tfds:librispeech_folder/train_clean", CFG, data_dir=tmp_path,
                                   process_index=0, process_count=1))
  from_folder = list(pl.make_batches(corpus, CFG, process_index=0, process_count=1))
  _same(from_tfds, from_folder)  # same scan order, same lengths → same plan


def test_config_errors(corpus):
  with pytest.raises(ValueError, match="buckets"):
    pl.PipelineConfig(buckets=(10, 5))
  with pytest.raises(ValueError, match="too_long"):
    pl.PipelineConfig(too_long="pad")
  with pytest.raises(ValueError, match="process_index"):
    pl.make_batches(corpus, CFG, process_index=2, process_count=2)
  with pytest.raises(ls.CorpusError, match="not a folder"):
    pl.make_batches(ls.scan_librispeech(corpus).utterances[0].path, CFG, process_index=0,
                    process_count=1)
  # A .json is read as a Diffusion-ASR data file: make_corpus's corpus.json is none.
  with pytest.raises(ls.CorpusError, match="no \"annotation\" list"):
    pl.make_batches(os.path.join(corpus, "..", "corpus.json"), CFG, process_index=0,
                    process_count=1)


def test_nothing_usable_is_a_clear_error(tmp_path):
  ch = tmp_path / "split" / "1" / "2"
  ch.mkdir(parents=True)
  (ch / "1-2-0000.flac").write_text("not audio")
  (ch / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
  with pytest.raises(ValueError, match="no usable utterances.*1-2-0000.flac"):
    pl.make_batches(tmp_path / "split", CFG, process_index=0, process_count=1)


def test_entry_points_import_tensorflow_datasets_only_for_tfds_specs():
  """tensorflow-datasets' import is ~0.3 s of each train/eval/transcribe/serve start."""
  probe = """
import sys
import llada_jax.cli.main, llada_jax.train.loop
from llada_jax.data import pipeline
before = "tensorflow_datasets" in sys.modules
try:
  pipeline.open_source("tfds:librispeech_folder/no_such_split", sys.argv[1])
except Exception:
  pass
print(before, "tensorflow_datasets" in sys.modules)
"""
  out = subprocess.run([sys.executable, "-c", probe, ROOT], capture_output=True, text=True,
                       check=True).stdout
  assert out.split() == ["False", "True"]
