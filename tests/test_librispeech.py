"""LibriSpeech-layout scanning and the tensorflow-datasets ArrayRecord builder/reader (no
TensorFlow)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from llada_jax.data import librispeech as ls
from llada_jax.data import tfds_librispeech as tl
from llada_jax.data.audio import load_audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox (make system)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("ls") / "corpus"
  subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), "--out", str(out),
                  "--num-train", "8", "--num-dev", "3", "--num-test", "4", "--seed", "3",
                  "--jobs", "2"], check=True, capture_output=True)
  return out


def _say(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  wav = str(path) + ".tmp.wav"
  subprocess.run(["espeak-ng", "-w", wav, text], check=True)
  subprocess.run(["sox", wav, "-r", "16000", str(path)], check=True, capture_output=True)
  os.remove(wav)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
  """A split folder with every kind of problem next to good flac, wav and ogg utterances."""
  root = tmp_path_factory.mktemp("messy") / "test-clean"
  ch = root / "19" / "198"
  _say(ch / "19-198-0000.flac", "good flac")
  _say(ch / "19-198-0001.wav", "good wav")
  _say(ch / "19-198-0002.ogg", "good ogg")
  _say(ch / "19-198-0003.flac", "no transcript line")
  _say(ch / "19-198-0005.flac", "duplicate flac")
  shutil.copy(ch / "19-198-0001.wav", ch / "19-198-0005.wav")
  _say(ch / "20-198-0006.flac", "wrong prefix")
  (ch / "notes.txt").write_text("not part of the corpus\n")
  (ch / "19-198.trans.txt").write_text(
      "19-198-0000 GOOD FLAC\n19-198-0001 GOOD   WAV\n19-198-0002 GOOD OGG\n"
      "19-198-0004 LINE WITHOUT AUDIO\n19-198-0005 DUPLICATE FLAC\n19-198-0000 AGAIN\n"
      "19-198-0007\n\n")
  ch2 = root / "19" / "199"  # audio but no transcript file
  _say(ch2 / "19-199-0000.flac", "orphan")
  ch3 = root / "21" / "300"
  ch3.mkdir(parents=True)
  (ch3 / "21-300.trans.txt").write_bytes(b"21-300-0000 \xff\xfe bad bytes\n")
  (root / "README.TXT").write_text("files at the top level are ignored\n")
  return root


def test_scan_synthetic_corpus(corpus):
  scan = ls.scan_librispeech(corpus / "test-clean")
  assert scan.errors == []
  assert len(scan.utterances) == 4
  assert [u.id for u in scan.utterances] == sorted(u.id for u in scan.utterances)
  for u in scan.utterances:
    spk, chapter, _ = u.id.split("-")
    assert u.speaker == spk and u.path.endswith(os.path.join(spk, chapter, u.id + ".flac"))
    assert u.text and u.text == u.text.upper()
    trans = (corpus / "test-clean" / spk / chapter / f"{spk}-{chapter}.trans.txt").read_text()
    assert f"{u.id} {u.text}\n" in trans


def test_bad_data_becomes_error_records(messy):
  scan = ls.scan_librispeech(messy)
  got = {u.id: u for u in scan.utterances}
  assert sorted(got) == ["19-198-0000", "19-198-0001", "19-198-0002", "19-198-0005"]
  assert got["19-198-0001"].text == "GOOD WAV" and got["19-198-0001"].path.endswith(".wav")
  assert got["19-198-0002"].path.endswith(".ogg")
  assert got["19-198-0005"].path.endswith(".flac")  # flac preferred over the duplicate wav
  assert got["19-198-0000"].text == "GOOD FLAC"  # the first transcript line wins
  reasons = {(e.id, e.reason.split(":")[0]) for e in scan.errors}
  assert ("19-198-0003", "audio has no transcript line") in reasons
  assert ("19-198-0004", "transcript line has no audio file (.flac/.wav/.ogg)") in reasons
  assert ("19-198-0005", "duplicate id") in reasons
  assert ("19-198-0000", "duplicate id in transcript file (first kept)") in reasons
  assert ("19-198-0007", "transcript line has an id but no text") in reasons
  assert ("20-198-0006", "file name does not start with '19-198-'") in reasons
  assert ("19-199-0000", "audio has no transcript line") in reasons
  assert (None, "transcript file missing") in reasons
  assert (None, "unreadable transcript file") in reasons
  for e in scan.errors:
    assert e.path.startswith(str(messy))


def test_unreadable_folder_is_an_error_record(messy, monkeypatch):
  real = os.scandir
  bad = str(messy / "19" / "199")

  def scandir(path="."):
    if os.fspath(path) == bad:
      raise PermissionError(13, "Permission denied", bad)
    return real(path)

  monkeypatch.setattr(ls.os, "scandir", scandir)
  scan = ls.scan_librispeech(messy)
  assert any(e.path == bad and e.reason.startswith("unreadable folder") for e in scan.errors)
  assert len(scan.utterances) == 4


def test_strict_raises(messy):
  with pytest.raises(ls.CorpusError, match="problem"):
    ls.scan_librispeech(messy, strict=True)


def test_spec_that_is_not_a_folder(tmp_path, corpus):
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(ls.CorpusError, match="not a folder"):
    ls.scan_librispeech(tmp_path / "file.txt")
  with pytest.raises(ls.CorpusError, match="no such folder"):
    ls.scan_librispeech(tmp_path / "missing")
  with pytest.raises(ls.CorpusError, match="pass one split folder"):
    ls.scan_librispeech(corpus)  # the root holding split folders, not a split


def test_split_names(corpus):
  assert ls.split_name("train-clean-100") == "train_clean100"
  assert ls.split_name("train-other-500") == "train_other500"
  assert ls.split_name("dev-clean") == "dev_clean"
  assert set(ls.split_folders(corpus)) == {"train_clean", "dev_clean", "test_clean"}


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  tl.prepare(corpus, data_dir)
  return data_dir


def test_tfds_round_trip(corpus, prepared):
  for split, folder, n in [("test_clean", "test-clean", 4), ("dev_clean", "dev-clean", 3),
                           ("train_clean", "train-clean", 8)]:
    reader = tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/{split}", prepared)
    utts = ls.scan_librispeech(corpus / folder).utterances
    assert len(reader) == n == len(utts)
    lengths = reader.lengths()
    for i, u in enumerate(utts):  # written in scan order, so index i is the i-th utterance
      ex = reader[i]
      assert (ex["id"], ex["text"], ex["speaker"]) == (u.id, u.text, u.speaker)
      ref = load_audio(u.path)
      np.testing.assert_array_equal(ex["audio"], ref)  # 16-bit flac → int16 is exact
      assert lengths[i] == ref.shape[0]
    assert reader.errors == []


def test_tfds_builder_skips_bad_audio(messy, tmp_path):
  split = tmp_path / "test-clean"
  shutil.copytree(messy, split)
  good = split / "19" / "198" / "19-198-0000.flac"
  data = good.read_bytes()
  good.write_bytes(data[:len(data) // 2])  # truncated: must not stop the build
  tl.prepare(split, tmp_path / "data")
  reader = tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/test_clean", tmp_path / "data")
  assert sorted(reader[i]["id"] for i in range(len(reader))) == [
      "19-198-0001", "19-198-0002", "19-198-0005"]
  assert any(e.id == "19-198-0000" and e.path.endswith("19-198-0000.flac")
             and "not readable" in e.reason for e in reader.errors)
  assert len(reader.errors) > 5  # the scan's own error records are kept too


def test_tfds_spec_errors(tmp_path):
  with pytest.raises(ValueError, match="tfds:NAME/SPLIT"):
    tl.parse_spec("tfds:librispeech_folder")
  assert tl.parse_spec("tfds:librispeech/clean:2.1.0/test") == ("librispeech/clean:2.1.0", "test")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/test_clean", tmp_path)


@pytest.mark.skipif(not tl._tensorflow_missing(), reason="TensorFlow is installed")
def test_official_librispeech_explains_tensorflow(tmp_path):
  with pytest.raises(ImportError, match="tensorflow-cpu"):
    tl.open_tfds("tfds:librispeech/test_clean", tmp_path)


def test_tfds_strict_build_and_config_root(messy, corpus, tmp_path):
  with pytest.raises(ls.CorpusError, match="problem"):
    tl.prepare(messy, tmp_path / "strict", strict=True)
  builder = tl.LibriSpeechFolder(data_dir=str(tmp_path / "cfg"), config=tl.LibriSpeechFolderConfig(
      name="synthetic", root=str(corpus / "dev-clean")))
  builder.download_and_prepare()
  reader = tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/synthetic/dev_clean", tmp_path / "cfg")
  assert [reader[i]["id"] for i in range(len(reader))] == [
      u.id for u in ls.scan_librispeech(corpus / "dev-clean").utterances]


def test_tfds_lengths_without_stored_metadata(prepared, tmp_path):
  # A dataset prepared elsewhere (e.g. the official one) has no sample counts: read them once.
  copy = tmp_path / "copy"
  shutil.copytree(prepared, copy)
  [meta] = list(copy.glob("*/*/*/metadata.json"))
  meta.unlink()
  reader = tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/test_clean", copy)
  stored = tl.open_tfds(f"tfds:{tl.BUILDER_NAME}/test_clean", prepared).lengths()
  np.testing.assert_array_equal(reader.lengths(), stored)
