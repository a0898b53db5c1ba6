#!/usr/bin/env python3
"""Synthesize a small LibriSpeech-layout corpus with espeak-ng: real audio files, real transcripts.

    python tools/make_corpus.py --out runs/corpus --num-train 400 --num-dev 50 --num-test 50 --seed
    0

Writes OUT/{train-clean,dev-clean,test-clean}/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac (16 kHz,
16-bit) with SPEAKER-CHAPTER.trans.txt beside them, and OUT/corpus.json describing how it was made.

Text: `--text FILE…`, else the Debian `fortunes` files (/usr/share/games/fortunes), else the dataset
descriptions that ship inside the tensorflow-datasets wheel. Sentences are filtered to what
espeak-ng reads the way the transcript spells it: 3–25 words of plain English letters and
punctuation, no digits, abbreviations or all-caps acronyms. Splits have disjoint sentences and
disjoint speakers (a speaker is one espeak voice + variant), as LibriSpeech's do; speed varies per
utterance.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import soxr

from llada_jax.data.audio import SAMPLE_RATE

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd")
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
SPEEDS = (130, 190)
SPLITS = ("test-clean", "dev-clean", "train-clean")  # test first: it gets first pick of sentences
FORTUNES_DIR = "/usr/share/games/fortunes"
# Not prose, or not English.
FORTUNES_SKIP = {"ascii-art", "art", "perl", "translate-me", "linux", "debian", "zippy"}
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "ie", "eg", "co", "inc",
                 "ltd", "prof", "gen", "col", "capt", "lt", "sgt", "rev", "hon", "mt", "ft", "no"}
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_ALLOWED = re.compile(r"^[A-Za-z ,.;:!?'\"()\-]+$")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def default_text_files() -> tuple[list[str], str]:
  """The default text and a one-line name for it (recorded in corpus.json)."""
  if os.path.isdir(FORTUNES_DIR):
    files = sorted(p for p in glob.glob(os.path.join(FORTUNES_DIR, "*"))
                   if os.path.isfile(p) and "." not in os.path.basename(p)
                   and os.path.basename(p) not in FORTUNES_SKIP)
    if files:
      return files, f"Debian fortunes ({FORTUNES_DIR}, {len(files)} files)"
  import tensorflow_datasets  # a dependency already: its wheel ships English dataset descriptions
  root = os.path.join(os.path.dirname(tensorflow_datasets.__file__), "datasets")
  files = sorted(glob.glob(os.path.join(root, "*", "README.md")))
  if not files:
    sys.exit("make_corpus: no default text found; pass --text FILE (or apt-get install fortunes)")
  return files, f"tensorflow-datasets dataset READMEs ({len(files)} files)"


def read_paragraphs(path: str) -> list[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    raw = f.read()
  # fortune files separate entries with '%' lines; attribution lines start with '--'.
  chunks = re.split(r"^%\s*$|\n\s*\n", raw, flags=re.M)
  out = []
  for chunk in chunks:
    lines = [ln.strip() for ln in chunk.splitlines()
             if ln.strip() and not ln.strip().startswith(("--", "#", "|", "```", "*", ">", "-"))]
    if lines:
      out.append(" ".join(lines))
  return out


def transcript(sentence: str, max_words: int = 25) -> str | None:
  """LibriSpeech-style transcript (UPPERCASE words and apostrophes) or None if espeak-ng would not
  say exactly these words."""
  if not _ALLOWED.match(sentence):
    return None
  words = _WORD.findall(sentence.replace("-", " "))
  if not 3 <= len(words) <= max_words:
    return None
  for w in words:
    bare = w.lower().strip("'")
    if bare in ABBREVIATIONS:
      return None
    if len(w) > 1 and w.isupper():  # acronyms are spelled out letter by letter
      return None
    if len(w) == 1 and bare not in ("a", "i", "o"):  # "n." in a definition is read as a letter
      return None
  return " ".join(words).upper()


def sentences_from(files: list[str], max_words: int = 25,
                   vocab_size: int | None = None) -> list[tuple[str, str]]:
  """(sentence to speak, transcript) pairs, deduplicated by transcript, in file order.

  With `vocab_size`, only sentences whose every word is among the `vocab_size` most frequent words
  of all usable sentences: a closed-vocabulary task (as WSJ's 5k), where every test word is seen in
  training many times, so a small model trained for minutes can learn each word's sound.
  """
  seen, out = set(), []
  for path in files:
    for para in read_paragraphs(path):
      for sent in _SENTENCE_END.split(para):
        sent = " ".join(sent.split())
        text = transcript(sent, max_words)
        if text and text not in seen:
          seen.add(text)
          out.append((sent, text))
  if vocab_size:
    counts = collections.Counter(w for _, text in out for w in text.split())
    # ties broken alphabetically: the vocabulary depends only on the text
    vocab = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]}
    out = [(s, t) for s, t in out if all(w in vocab for w in t.split())]
  return out


def _synthesize(job: dict) -> dict:
  """One utterance: espeak-ng → 22.05 kHz wav → soxr to 16 kHz → optional noise → 16-bit flac."""
  rng = np.random.default_rng(job["seed"])
  with tempfile.TemporaryDirectory() as tmp:
    wav = os.path.join(tmp, "u.wav")
    cmd = ["espeak-ng", "-v", f"{job['voice']}+{job['variant']}", "-s", str(job["speed"]),
           "-w", wav, "--stdin"]
    proc = subprocess.run(cmd, input=job["sentence"].encode(), capture_output=True, timeout=60)
    if proc.returncode != 0 or not os.path.exists(wav):
      raise RuntimeError(f"espeak-ng failed for {job['id']}: "
                         f"{proc.stderr.decode(errors='replace')}")
    audio, rate = sf.read(wav, dtype="float32")
  if audio.ndim > 1:
    audio = audio.mean(axis=1)
  if audio.size == 0:
    raise RuntimeError(f"espeak-ng produced no audio for {job['id']}: {job['sentence']!r}")
  audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="VHQ")
  if job["noise_snr"] is not None:
    power = float(np.mean(audio.astype(np.float64) ** 2))
    noise_std = np.sqrt(power / 10.0 ** (job["noise_snr"] / 10.0))
    audio = audio + rng.normal(0.0, noise_std, audio.shape).astype(np.float32)
  peak = float(np.max(np.abs(audio)))
  if peak > 0.99:  # keep 16-bit PCM from clipping
    audio = audio * (0.99 / peak)
  sf.write(job["path"], audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
  return {"id": job["id"], "samples": int(audio.shape[0])}


def plan(pairs: list[tuple[str, str]], counts: dict[str, int], seed: int, noise_snr: float | None,
         root: str) -> list[dict]:
  """Every utterance's sentence, speaker, speed, path and seed; depends only on the arguments."""
  rng = random.Random(seed)
  pairs = list(pairs)
  rng.shuffle(pairs)
  need_heldout = counts["test-clean"] + counts["dev-clean"]
  if need_heldout + min(counts["train-clean"], 1) > len(pairs):
    sys.exit(f"make_corpus: {len(pairs)} usable sentences, but test+dev alone need {need_heldout} "
             f"(plus some for train): give more text")
  pools = {"test-clean": pairs[:counts["test-clean"]],
           "dev-clean": pairs[counts["test-clean"]:need_heldout],
           "train-clean": pairs[need_heldout:]}
  speakers = [(v, var) for v in VOICES for var in VARIANTS]
  rng.shuffle(speakers)
  n_held = max(1, len(speakers) // 6)
  speaker_pools = {"test-clean": speakers[:n_held], "dev-clean": speakers[n_held:2 * n_held],
                   "train-clean": speakers[2 * n_held:]}
  speaker_ids = {s: 100 + i for i, s in enumerate(sorted(speakers))}
  jobs = []
  for split in SPLITS:
    pool = pools[split]
    if counts[split] > len(pool):
      print(f"make_corpus: {split}: {counts[split]} utterances from {len(pool)} sentences; "
            f"sentences repeat with other voices", file=sys.stderr)
    next_utt: dict[tuple[int, int], int] = {}
    for k in range(counts[split]):
      sentence, text = pool[k % len(pool)]
      voice, variant = rng.choice(speaker_pools[split])
      spk = speaker_ids[(voice, variant)]
      chapter = spk * 10 + rng.randrange(2)  # two chapters per speaker, like several books
      utt = next_utt.get((spk, chapter), 0)
      next_utt[(spk, chapter)] = utt + 1
      utt_id = f"{spk}-{chapter}-{utt:04d}"
      folder = os.path.join(root, split, str(spk), str(chapter))
      jobs.append({"id": utt_id, "split": split, "sentence": sentence, "text": text, "voice": voice,
                   "variant": variant, "speaker": spk, "chapter": chapter,
                   "speed": rng.randint(*SPEEDS), "noise_snr": noise_snr,
                   "seed": [seed, SPLITS.index(split), k],
                   "path": os.path.join(folder, f"{utt_id}.flac")})
  return jobs


def build(text_files: list[str], text_source: str, out: str, counts: dict[str, int], seed: int,
          noise_snr: float | None = None, jobs: int | None = None, overwrite: bool = False,
          max_words: int = 25, vocab_size: int | None = None) -> dict:
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    sys.exit(f"make_corpus: {out} exists; pass --overwrite to replace it")
  pairs = sentences_from(text_files, max_words, vocab_size)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  # Build beside the target and rename: an interrupted run never leaves a half corpus at OUT.
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    plan_ = plan(pairs, counts, seed, noise_snr, tmp)
    for job in plan_:
      os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
    t0 = time.time()
    workers = jobs or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
      results = list(pool.map(_synthesize, plan_, chunksize=max(1, len(plan_) // (workers * 8))))
    samples = {r["id"]: r["samples"] for r in results}
    chapters: dict[str, list[dict]] = {}
    for job in plan_:
      chapters.setdefault(os.path.dirname(job["path"]), []).append(job)
    for folder, items in chapters.items():
      name = f"{items[0]['speaker']}-{items[0]['chapter']}.trans.txt"
      with open(os.path.join(folder, name), "w") as f:
        f.writelines(f"{j['id']} {j['text']}\n" for j in sorted(items, key=lambda j: j["id"]))
    manifest = {
        "text_source": text_source, "text_files": len(text_files), "usable_sentences": len(pairs),
        "vocab_size": vocab_size, "seed": seed, "noise_snr_db": noise_snr,
        "sample_rate": SAMPLE_RATE,
        "counts": {s: counts[s] for s in SPLITS},
        "hours": {s: round(sum(samples[j["id"]] for j in plan_ if j["split"] == s)
                           / SAMPLE_RATE / 3600, 4) for s in SPLITS},
        "speakers": {str(j["speaker"]): f"{j['voice']}+{j['variant']}" for j in plan_},
        "synthesis_seconds": round(time.time() - t0, 2),
    }
    with open(os.path.join(tmp, "corpus.json"), "w") as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
    for split in SPLITS:
      os.makedirs(os.path.join(tmp, split), exist_ok=True)
    os.chmod(tmp, 0o755)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--text", nargs="+", help="text file(s); default: Debian fortunes, else "
                  "tensorflow-datasets' dataset descriptions")
  ap.add_argument("--out", required=True, help="corpus folder to create")
  ap.add_argument("--num-train", type=int, default=200)
  ap.add_argument("--num-dev", type=int, default=20)
  ap.add_argument("--num-test", type=int, default=20)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--noise-snr", type=float, default=None, help="add white noise at this SNR (dB)")
  ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
  ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  ap.add_argument("--max-words", type=int, default=25,
                  help="longest sentence kept (3..N words); bounds utterance length")
  ap.add_argument("--vocab-size", type=int, default=None,
                  help="closed vocabulary: keep sentences made only of the N most frequent words")
  args = ap.parse_args(argv)
  if args.vocab_size is not None and args.vocab_size < 1:
    ap.error("--vocab-size must be >= 1")
  for name in ("num_train", "num_dev", "num_test"):
    if getattr(args, name) < 0:
      ap.error(f"--{name.replace('_', '-')} must be >= 0")
  if shutil.which("espeak-ng") is None:
    sys.exit("make_corpus: espeak-ng not found (apt-get install espeak-ng)")
  if args.text:
    missing = [p for p in args.text if not os.path.isfile(p)]
    if missing:
      ap.error(f"--text: no such file(s): {missing}")
    files, source = args.text, f"{len(args.text)} file(s) given with --text"
  else:
    files, source = default_text_files()
  counts = {"train-clean": args.num_train, "dev-clean": args.num_dev, "test-clean": args.num_test}
  manifest = build(files, source, args.out, counts, args.seed, args.noise_snr, args.jobs,
                   args.overwrite, args.max_words, args.vocab_size)
  print(json.dumps({k: manifest[k] for k in ("text_source", "usable_sentences", "counts", "hours",
                                             "synthesis_seconds")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
