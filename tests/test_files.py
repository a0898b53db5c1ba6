"""Audio files in any layout and format (`llada_jax.data.files`, `audio.load_audio`'s PyAV
fallback): folders of wav/flac/ogg/mp3/m4a, glob patterns, .txt and .jsonl lists, bad entries as
error records, and `pipeline.open_source`'s rule for telling data specs apart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import MP3_MISSING, encode, mp3_encoder, write_mp3

from llada_jax.data import files, librispeech, manifest, pipeline
from llada_jax.data.audio import AudioError, audio_length, load_audio
from llada_jax.evaluation import outputs, runner
from llada_jax.inference.transcriber import Transcriber

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox (make system)")


def speech(folder: Path, name: str, words: str) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  wav = folder / f"{name}.wav"
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), words], check=True)
  return wav


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict:
  """A folder of one sentence in every format, in sub-folders, plus files that are not audio."""
  root = tmp_path_factory.mktemp("mixed") / "clips"
  wav = speech(root, "a", "the birch canoe slid on the smooth planks")
  subprocess.run(["sox", str(wav), "-r", "16000", str(root / "b.flac")], check=True)
  (root / "deep" / "er").mkdir(parents=True)
  subprocess.run(["sox", str(wav), "-r", "16000", str(root / "deep" / "c.ogg")], check=True)
  encode(wav, root / "deep" / "er" / "e.m4a", "aac", "mp4")
  names = ["a.wav", "b.flac", "deep/c.ogg", "deep/er/e.m4a"]
  if mp3_encoder():
    write_mp3(wav, root / "deep" / "d.mp3")
    names.insert(3, "deep/d.mp3")
  (root / "notes.md").write_text("not audio, not listed\n")
  (root / ".hidden.wav").write_text("skipped: a hidden name\n")
  return {"root": root, "names": names, "ref": load_audio(wav)}


def test_a_folder_of_mixed_formats_lists_and_loads_them_all(mixed):
  src = pipeline.open_source(mixed["root"])
  assert isinstance(src, files.FilesSource)
  assert [u.id for u in src.utterances] == mixed["names"]
  assert all(u.text is None for u in src.utterances) and not src.errors
  ref = mixed["ref"]
  for i, n in enumerate(src.lengths()):
    item = src[i]
    audio = item["audio"]
    assert item["id"] == mixed["names"][i] and item["text"] is None
    assert audio.dtype == np.float32 and audio.ndim == 1
    # lossy codecs add encoder delay / padding (aac: ~1024 samples at 22.05 kHz)
    assert abs(audio.shape[0] - ref.shape[0]) < 0.1 * 16000, item["id"]
    assert abs(int(n) - audio.shape[0]) <= 1, (item["id"], n, audio.shape)
    if item["id"] in ("a.wav", "b.flac"):
      n_common = min(audio.shape[0], ref.shape[0])
      assert np.corrcoef(audio[:n_common], ref[:n_common])[0, 1] > 0.99
  if "deep/d.mp3" not in mixed["names"]:
    pytest.skip(f"{MP3_MISSING} (wav, flac, ogg and m4a checked)")
  assert mixed["names"] == ["a.wav", "b.flac", "deep/c.ogg", "deep/d.mp3", "deep/er/e.m4a"]


def test_m4a_needs_pyav_and_mp3_reads_either_way(mixed):
  root = mixed["root"]
  with pytest.raises(sf.LibsndfileError):
    sf.info(root / "deep" / "er" / "e.m4a")  # libsndfile lacks it: PyAV decodes it
  assert audio_length(root / "deep" / "er" / "e.m4a") == load_audio(
      root / "deep" / "er" / "e.m4a").shape[0]
  if (root / "deep" / "d.mp3").exists():
    # the same decoding as libsndfile when PyAV does it (an older libsndfile lacks mp3)
    from llada_jax.data import audio as audio_lib

    via_ffmpeg, rate = audio_lib._decode_ffmpeg(str(root / "deep" / "d.mp3"), RuntimeError("x"))
    mono = audio_lib.resample(via_ffmpeg.mean(axis=1), rate)
    got = load_audio(root / "deep" / "d.mp3")
    n = min(mono.shape[0], got.shape[0])
    assert abs(mono.shape[0] - got.shape[0]) < 0.1 * 16000
    assert np.corrcoef(mono[:n], got[:n])[0, 1] > 0.9


@pytest.mark.parametrize("name", ["junk.mp3", "junk.m4a", "junk.webm", "junk.flac"])
def test_non_audio_is_an_audio_error_naming_the_file(tmp_path, name):
  path = tmp_path / name
  path.write_text("this is a transcript, not audio\n" * 20)
  with pytest.raises(AudioError, match="not readable as audio") as info:
    load_audio(path)
  assert str(path) in str(info.value)
  with pytest.raises(AudioError, match=str(path)):
    audio_length(path)


def test_a_corrupt_file_is_an_error_record_naming_it(mixed, tmp_path):
  root = tmp_path / "clips"
  shutil.copytree(mixed["root"], root)
  (root / "deep" / "broken.m4a").write_bytes((root / "deep" / "er" / "e.m4a").read_bytes()[:300])
  (root / "z.mp3").write_text("not an mp3\n" * 30)
  (root / "empty.ogg").write_bytes(b"")
  src = files.FilesSource(root)
  assert len(src) == len(mixed["names"]) + 3
  lengths = src.lengths()
  bad = {e.id: e for e in src.errors}
  assert set(bad) == {"deep/broken.m4a", "z.mp3", "empty.ogg"}
  for utt_id, e in bad.items():
    assert e.path == str(root / utt_id) and e.path in e.reason
    assert lengths[[u.id for u in src.utterances].index(utt_id)] == -1
  assert "empty file" in bad["empty.ogg"].reason
  # the pipeline leaves them out and transcribes the rest
  batches = pipeline.AudioBatches(src, pipeline.PipelineConfig(batch_size=4, shuffle=False),
                                  process_index=0, process_count=1)
  ids = [i for b in batches for i, v in zip(b["ids"], b["valid"]) if v]
  assert sorted(ids) == sorted(mixed["names"])
  with pytest.raises(files.FilesError, match="3 bad file"):
    files.FilesSource(root, strict=True)


def test_glob_patterns(mixed):
  root = mixed["root"]
  src = pipeline.open_source(f"{root}/**/*.og[g]")
  assert isinstance(src, files.FilesSource)
  assert [u.id for u in src.utterances] == [f"{root}/deep/c.ogg"]  # ids: the matched paths
  every = files.FilesSource(f"{root}/**/*")  # a pattern keeps what it matches, folders skipped
  assert {Path(u.path).name for u in every.utterances} == {
      Path(n).name for n in mixed["names"]} | {"notes.md"}
  assert len(every.lengths()) == len(every) and [e.id for e in every.errors] == [
      f"{root}/notes.md"]
  with pytest.raises(files.FilesError, match="matches no files"):
    pipeline.open_source(f"{root}/*.nothing")


def test_text_and_jsonl_lists(mixed, tmp_path, monkeypatch):
  root = mixed["root"]
  monkeypatch.chdir(root)  # listed paths are relative to the working directory
  (tmp_path / "l.txt").write_text(
      "# a comment\n\ndeep/c.ogg\n  a.wav  \nmissing.wav\n./a.wav\nb.flac\n")
  src = pipeline.open_source(tmp_path / "l.txt")
  assert [u.id for u in src.utterances] == ["deep/c.ogg", "a.wav", "b.flac"]
  reasons = {e.path: e.reason for e in src.errors}
  assert reasons == {"missing.wav": f"{tmp_path / 'l.txt'}:5: no such file",
                     "./a.wav": f"{tmp_path / 'l.txt'}:6: listed again "
                                f"({tmp_path / 'l.txt'}:4 kept)"}
  rows = [{"path": "a.wav", "text": "THE BIRCH CANOE"}, {"path": "b.flac"}, "not an object",
          {"path": "deep/c.ogg", "text": None}, {"text": "no path"},
          {"path": "gone.mp3", "text": "X"}]
  lines = [json.dumps(r) for r in rows] + ["{torn"]
  (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
  src = pipeline.open_source(tmp_path / "l.jsonl")
  assert [(u.id, u.text) for u in src.utterances] == [
      ("a.wav", "THE BIRCH CANOE"), ("b.flac", None), ("deep/c.ogg", None)]
  assert src[0]["text"] == "THE BIRCH CANOE" and src[1]["text"] is None
  where = sorted(e.reason.split(": ")[0] for e in src.errors)
  jl = str(tmp_path / "l.jsonl")
  assert where == [f"{jl}:3", f"{jl}:5", f"{jl}:6", f"{jl}:7"], src.errors
  assert [e.path for e in src.errors if e.id] == ["gone.mp3"]
  assert len(src.head(2)) == 2 and src.head(2).errors == src.errors
  with pytest.raises(files.FilesError, match="no such list file"):
    pipeline.open_source(tmp_path / "nope.txt")
  (tmp_path / "empty.txt").write_text("# nothing\n\n")
  with pytest.raises(files.FilesError, match="lists no paths"):
    pipeline.open_source(tmp_path / "empty.txt")


def test_several_specs_name_each_file_once(mixed, monkeypatch):
  root = mixed["root"]
  monkeypatch.chdir(root.parent)
  listing = files.list_many(["clips", "clips/a.wav", "clips/./b.flac", "clips/deep/*.ogg"])
  assert [f.path for f in listing.files] == [f"clips/{n}" for n in mixed["names"]]
  assert [f.id for f in listing.files] == [f.path for f in listing.files]
  assert not listing.errors
  with pytest.raises(files.FilesError, match="no such folder or file"):
    files.list_many(["clips", "nope.wav"])


def test_open_source_rule(mixed, tmp_path):
  """tfds: / .json / lists / patterns / folders with a *.trans.txt (LibriSpeech) / other
  folders (audio files) / anything else (LibriSpeech's own errors)."""
  libri = tmp_path / "ls" / "1" / "10"
  libri.mkdir(parents=True)
  sf.write(libri / "1-10-0000.flac", np.zeros(1600, np.float32), 16000)
  (libri / "1-10.trans.txt").write_text("1-10-0000 HELLO\n")
  assert isinstance(pipeline.open_source(tmp_path / "ls"), pipeline.FolderSource)
  assert isinstance(pipeline.open_source(mixed["root"]), files.FilesSource)
  (tmp_path / "m.json").write_text(json.dumps({"annotation": [
      {"path": str(mixed["root"] / "a.wav"), "text": "A"}]}))
  assert isinstance(pipeline.open_source(tmp_path / "m.json"), manifest.ManifestSource)
  with pytest.raises(librispeech.CorpusError, match="no such folder"):
    pipeline.open_source(tmp_path / "nope")
  with pytest.raises(librispeech.CorpusError, match="not a folder"):
    pipeline.open_source(mixed["root"] / "a.wav")  # one file: a pattern or a list says it
  (tmp_path / "empty").mkdir()
  with pytest.raises(files.FilesError, match="no audio files"):
    pipeline.open_source(tmp_path / "empty")


def test_training_refuses_audio_without_transcripts(mixed, tmp_path):
  with pytest.raises(librispeech.CorpusError, match="no transcript"):
    pipeline.make_batches(mixed["root"], process_index=0, process_count=1)
  (tmp_path / "t.jsonl").write_text(json.dumps({"path": str(mixed["root"] / "a.wav"),
                                                "text": "THE BIRCH CANOE"}) + "\n")
  batches = pipeline.make_batches(tmp_path / "t.jsonl", pipeline.PipelineConfig(batch_size=1),
                                  process_index=0, process_count=1)
  assert [b["text"][0] for b in batches] == ["THE BIRCH CANOE"]


class Counter(Transcriber):
  """Model-free: the same three words for every row."""

  def __init__(self):
    super().__init__(batch_size=2)
    self.name = "counter"

  def transcribe(self, batch):
    return [("the birch canoe", None) for _ in batch.ids]


def test_eval_without_references_has_no_wer(mixed, tmp_path):
  summary = runner.run(Counter(), runner.RunSettings(data=str(mixed["root"]),
                                                     out=str(tmp_path / "a"), quiet=True))
  rows = [json.loads(x) for x in (tmp_path / "a" / "hyps.jsonl").read_text().splitlines()]
  assert [r["id"] for r in rows] == mixed["names"]
  assert all(r["ref"] is None and r["hyp"] == "the birch canoe" for r in rows)
  assert summary["wer"] is None and summary["ref_words"] is None
  assert summary["num_utts"] == summary["num_unreferenced"] == len(mixed["names"])
  assert "—" in outputs.format_table(summary)
  # some with a reference: the WER is theirs alone
  lst = tmp_path / "l.jsonl"
  lst.write_text("".join(json.dumps(r) + "\n" for r in [
      {"path": str(mixed["root"] / "a.wav"), "text": "THE BIRCH CANOE SLID"},
      {"path": str(mixed["root"] / "b.flac")},
      {"path": str(mixed["root"] / "gone.wav"), "text": "GONE"}]))
  summary = runner.run(Counter(), runner.RunSettings(data=str(lst), out=str(tmp_path / "b"),
                                                     quiet=True))
  assert summary["wer"] == pytest.approx(1 / 4) and summary["ref_words"] == 4
  assert (summary["num_utts"], summary["num_unreferenced"], summary["num_errors"]) == (2, 1, 1)
  rows = {r["id"]: r for r in map(json.loads, (tmp_path / "b" / "hyps.jsonl").read_text()
                                  .splitlines())}
  assert "no such file" in rows[str(mixed["root"] / "gone.wav")]["error"]
  summary = runner.run(Counter(), runner.RunSettings(data=str(lst), out=str(tmp_path / "c"),
                                                     quiet=True, limit=1))
  assert summary["num_utts"] == 1
