"""tools/make_corpus.py: a real espeak-ng corpus in LibriSpeech layout, fast and reproducible."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from llada_jax.data import librispeech as ls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "make_corpus.py")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

_spec = importlib.util.spec_from_file_location("make_corpus", TOOL)
mc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)

TEXT = """The old man walked slowly down the quiet road. He carried a basket of fresh apples!
Nobody knew where he was going, and nobody asked. The birds sang in the tall green trees.
Mr. Smith arrived at 5 o'clock. The NASA engineers met twice. Short one.
A gentle rain began to fall over the sleeping village. Children laughed somewhere far away.
The river ran cold and clear beneath the wooden bridge. She didn't want to leave the garden.
Every window in the house glowed with warm yellow light. The dog waited patiently by the door.
"""


def _run(*args, check=True):
  return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                        check=check)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = tmp_path_factory.mktemp("mc") / "corpus"
  t0 = time.time()
  proc = _run("--out", out, "--num-train", 80, "--num-dev", 10, "--num-test", 10, "--seed", 1,
              "--jobs", 2)
  return out, time.time() - t0, json.loads(proc.stdout.strip().splitlines()[-1])


def test_100_utterances_counted_by_split(corpus):
  # (How long it takes is benchmark material, not a test: a loaded CI machine must not fail it.)
  _, seconds, summary = corpus
  print(f"make_corpus: {seconds:.1f} s for 100 utterances")
  assert summary["counts"] == {"train-clean": 80, "dev-clean": 10, "test-clean": 10}


def test_layout_transcripts_and_audio(corpus):
  out, _, _ = corpus
  texts, speakers = {}, {}
  for split, n in [("train-clean", 80), ("dev-clean", 10), ("test-clean", 10)]:
    scan = ls.scan_librispeech(out / split, strict=True)
    assert len(scan.utterances) == n
    texts[split] = {u.text for u in scan.utterances}
    speakers[split] = {u.speaker for u in scan.utterances}
    for u in scan.utterances[:10]:
      info = sf.info(u.path)
      assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16",
                                                                            "FLAC")
      assert 0.5 < info.duration < 20
      words = u.text.split()
      assert 3 <= len(words) <= 25
      assert all(w.replace("'", "").isalpha() and w.isupper() for w in words)
  # Held-out splits share neither sentences nor speakers with training (or each other).
  for a, b in [("train-clean", "dev-clean"), ("train-clean", "test-clean"),
               ("dev-clean", "test-clean")]:
    assert not texts[a] & texts[b] and not speakers[a] & speakers[b]
  manifest = json.loads((out / "corpus.json").read_text())
  assert manifest["text_source"].startswith(("Debian fortunes", "tensorflow-datasets"))
  voices = set(manifest["speakers"].values())
  assert len({v.split("+")[0] for v in voices}) >= 4 and len(voices) >= 20
  assert not [p for p in os.listdir(out.parent) if ".tmp-" in p]  # the temp dir was renamed


def test_same_seed_same_corpus(tmp_path):
  args = ["--text", tmp_path / "t.txt", "--num-train", 4, "--num-dev", 1, "--num-test", 1,
          "--seed", 9, "--jobs", 2]
  (tmp_path / "t.txt").write_text(TEXT)
  _run("--out", tmp_path / "a", *args)
  _run("--out", tmp_path / "b", *args)
  files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "a")
                 for d, _, fs in os.walk(tmp_path / "a") for f in fs if f != "corpus.json")
  assert files == sorted(os.path.relpath(os.path.join(d, f), tmp_path / "b")
                         for d, _, fs in os.walk(tmp_path / "b") for f in fs if f != "corpus.json")
  for f in files:
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_noise_at_snr(tmp_path):
  (tmp_path / "t.txt").write_text(TEXT)
  common = ["--text", tmp_path / "t.txt", "--num-train", 1, "--num-dev", 0, "--num-test", 0,
            "--seed", 2, "--jobs", 1]
  _run("--out", tmp_path / "clean", *common)
  _run("--out", tmp_path / "noisy", *common, "--noise-snr", 10)
  [clean] = ls.scan_librispeech(tmp_path / "clean" / "train-clean").utterances
  [noisy] = ls.scan_librispeech(tmp_path / "noisy" / "train-clean").utterances
  x, _ = sf.read(clean.path)
  y, _ = sf.read(noisy.path)
  snr = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
  assert 9 < snr < 11


def test_sentence_filter():
  want = "SHE DIDN'T WANT TO LEAVE THE GARDEN"
  assert mc.transcript("She didn't want to leave the garden.") == want
  assert mc.transcript("A well-known fact, really!") == "A WELL KNOWN FACT REALLY"
  assert mc.transcript("Mr. Smith arrived late.") is None  # abbreviation
  assert mc.transcript("The NASA engineers met twice.") is None  # acronym
  assert mc.transcript("It costs 5 dollars today.") is None  # digits
  assert mc.transcript("Too short.") is None
  assert mc.transcript(" ".join(["word"] * 26)) is None
  assert mc.transcript("Café au lait is nice.") is None  # not plain English letters
  pairs = mc.sentences_from([__file__])  # any text file works
  assert all(3 <= len(t.split()) <= 25 for _, t in pairs)


def test_closed_vocabulary(tmp_path):
  """--vocab-size keeps the sentences made only of the N most frequent words (ties:
  alphabetical)."""
  (tmp_path / "t.txt").write_text("The cat sat. The cat ran far. A dog sat down. The dog ran.\n")
  everything = [t for _, t in mc.sentences_from([str(tmp_path / "t.txt")])]
  # counts: THE 3, CAT 2, DOG 2, RAN 2, SAT 2, then A, DOWN, FAR once each
  kept = [t for _, t in mc.sentences_from([str(tmp_path / "t.txt")], vocab_size=5)]
  assert everything == ["THE CAT SAT", "THE CAT RAN FAR", "A DOG SAT DOWN", "THE DOG RAN"]
  assert kept == ["THE CAT SAT", "THE DOG RAN"]
  assert "--vocab-size must be >= 1" in _run("--out", tmp_path / "c", "--vocab-size", 0,
                                             check=False).stderr


def test_cli_errors(tmp_path, corpus):
  out, _, _ = corpus
  assert "exists" in _run("--out", out, "--num-train", 1, check=False).stderr
  assert "no such file" in _run("--out", tmp_path / "x", "--text", tmp_path / "nope.txt",
                                check=False).stderr
  (tmp_path / "t.txt").write_text(TEXT)
  proc = _run("--out", tmp_path / "y", "--text", tmp_path / "t.txt", "--num-test", 50, check=False)
  assert proc.returncode != 0 and "usable sentences" in proc.stderr
  assert not (tmp_path / "y").exists()
