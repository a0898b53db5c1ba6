"""Diffusion-ASR's JSON data files (`llada_jax.data.manifest`) as a source for the pipeline and
eval.py's runner: ids, bad entries, strict mode, origin_transcripts as the first pass, and their
predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llada_jax.cli import eval as cli
from llada_jax.data import manifest, pipeline
from llada_jax.evaluation import RunSettings, runner
from llada_jax.inference import transcriber as transcriber_lib


def _wav(path: Path, seconds: float, seed: int = 0) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  noise = 0.01 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))
  sf.write(path, noise, 16000)
  return str(path)


def _write(path: Path, entries: list) -> str:
  path.write_text(json.dumps({"annotation": entries}, indent=4))
  return str(path)


@pytest.fixture
def files(tmp_path) -> dict:
  """Good audio (LibriSpeech-style names, and two files sharing a stem) plus one non-audio file."""
  d = tmp_path / "audio"
  out = {k: _wav(d / f"1-10-000{i}.flac", 0.5 + 0.25 * i, seed=i)
         for i, k in enumerate(("a", "b", "c"))}
  out["spk1"] = _wav(d / "spk1" / "utt.wav", 0.4, seed=7)
  out["spk2"] = _wav(d / "spk2" / "utt.wav", 0.6, seed=8)
  (d / "not_audio.flac").write_text("this is not audio\n" * 20)
  out["not_audio"] = str(d / "not_audio.flac")
  out["missing"] = str(d / "missing.flac")
  return out


def test_entries_ids_and_bad_entries(files, tmp_path):
  f = files
  path = _write(tmp_path / "m.json", [
      {"path": f["b"], "text": "HELLO THERE", "task": "asr"},                    # 0
      {"path": f["a"], "text": "  GOOD  MORNING ", "origin_transcripts": "good morning"},  # 1
      {"path": f["missing"], "text": "GONE"},                                    # 2
      {"path": f["not_audio"], "text": "NOISE"},                                 # 3
      {"path": f["c"], "text": "   "},                                           # 4
      {"path": f["b"], "text": "HELLO AGAIN"},                                   # 5: same path
      {"path": f["spk1"], "text": "ONE"},                                        # 6
      {"path": f["spk2"], "text": "TWO"},                                        # 7
      "not an object",                                                           # 8
      {"text": "NO PATH"},                                                       # 9
      {"path": f["c"], "text": "C", "origin_transcripts": 3},                    # 10
  ])
  src = manifest.ManifestSource(path)
  # File order; stems as ids; a stem shared by two paths: STEM@INDEX for each. The non-audio
  # file is found when its header is read (its length is then -1, and it has an error record).
  assert [u.id for u in src.utterances] == ["1-10-0001", "1-10-0000", "not_audio", "utt@6",
                                            "utt@7"]
  assert [u.path for u in src.utterances][:2] == [f["b"], f["a"]]
  assert src.utterances[1].text == "  GOOD  MORNING "  # as written: their predictions repeat it
  assert src.first_pass == {"1-10-0000": "good morning"}
  assert src.where("utt@7") == f"annotation[7] ({f['spk2']})"
  lengths = src.lengths()  # reads headers: the non-audio file is found here
  assert lengths.tolist() == [12000, 8000, -1, 6400, 9600]
  reasons = {e.reason.split(":")[0]: (e.path, e.reason) for e in src.errors}
  assert set(reasons) == {f"annotation[{i}]" for i in (2, 3, 4, 5, 8, 9, 10)}
  assert reasons["annotation[2]"] == (f["missing"], "annotation[2]: no such file")
  assert "empty \"text\"" in reasons["annotation[4]"][1]
  assert "duplicate path (annotation[0] kept)" in reasons["annotation[5]"][1]
  assert "not an object" in reasons["annotation[8]"][1]
  assert "no \"path\"" in reasons["annotation[9]"][1]
  assert "origin_transcripts" in reasons["annotation[10]"][1]
  assert [u.id for u in src.utterances].count("1-10-0002") == 0
  # the non-audio file: an error record from the header read, naming the entry
  (bad,) = [e for e in src.errors if e.path == f["not_audio"]]
  assert bad.reason.startswith("annotation[3]: ") and "not readable as audio" in bad.reason
  assert bad.id == "not_audio"

  with pytest.raises(manifest.ManifestError) as e:
    manifest.ManifestSource(path, strict=True)
  for i in (2, 3, 4, 5, 8, 9, 10):
    assert f"annotation[{i}]" in str(e.value)
  assert "7 bad entries" in str(e.value)


def test_whole_file_errors(tmp_path):
  for name, content, want in (("missing.json", None, "no such file"),
                              ("bad.json", "{not json", "not readable as JSON"),
                              ("list.json", "[]", "no \"annotation\" list"),
                              ("empty.json", '{"annotation": []}', "is empty")):
    if content is not None:
      (tmp_path / name).write_text(content)
    with pytest.raises(manifest.ManifestError, match=want):
      manifest.ManifestSource(tmp_path / name)
  assert manifest.is_manifest("x/Data.JSON") and not manifest.is_manifest("x/test-clean")


def test_pipeline_reads_a_manifest(files, tmp_path):
  path = _write(tmp_path / "m.json", [{"path": files[k], "text": k.upper()} for k in "cab"])
  src = pipeline.open_source(path)
  assert isinstance(src, manifest.ManifestSource) and len(src) == 3
  config = pipeline.PipelineConfig(batch_size=4, buckets=(16000,), shuffle=False)
  (batch,) = list(pipeline.AudioBatches(src, config, process_index=0, process_count=1))
  assert batch["ids"][:3] == ["1-10-0002", "1-10-0000", "1-10-0001"] and batch["text"][0] == "C"
  assert batch["audio_len"].tolist()[:3] == [16000, 8000, 12000]
  np.testing.assert_allclose(batch["audio"][1, :8000], sf.read(files["a"])[0], atol=1e-4)
  with pytest.raises(manifest.ManifestError):
    pipeline.open_source(tmp_path / "nope.json")


# The references of the data files below, by utterance id: what Echo transcribes.
REFS = {"1-10-0000": "AY", "1-10-0001": "BEE", "1-10-0002": "SEE"}


class Echo(transcriber_lib.Transcriber):
  """Model-free: echoes the reference (REFS) in lower case, or (named "deliberation") the first
  pass."""

  max_seconds = 30.0

  def __init__(self, name="echo"):
    super().__init__(batch_size=2)
    self.name = name

  def transcribe(self, batch):
    if self.name == "deliberation":
      return [(h or "", None) for h in batch.hypothesis]
    return [(REFS.get(i, "").lower(), None) for i in batch.ids]


def test_run_writes_their_predictions_file(files, tmp_path):
  path = _write(tmp_path / "m.json", [
      {"path": files["c"], "text": "SEE", "origin_transcripts": "sea"},
      {"path": files["missing"], "text": "GONE", "origin_transcripts": "gone"},
      {"path": files["a"], "text": "AY"},
      {"path": files["b"], "text": "BEE", "origin_transcripts": "be"}])
  preds = tmp_path / "preds.json"
  summary = runner.run(Echo(), RunSettings(data=path, out=str(tmp_path / "out"), quiet=True,
                                           predictions_json=str(preds)))
  assert summary["num_utts"] == 3 and summary["num_errors"] == 1 and summary["wer"] == 0.0
  assert summary["ref_words"] == 3 and summary["truncated_utts"] == 0
  # Their inference.py's list, in file order, the error record left out.
  assert json.loads(preds.read_text()) == [
      {"path": files["c"], "text": "SEE", "llada_prediction": "see"},
      {"path": files["a"], "text": "AY", "llada_prediction": "ay"},
      {"path": files["b"], "text": "BEE", "llada_prediction": "bee"}]
  assert preds.read_text().startswith("[\n    {")  # their indent=4
  records = [json.loads(ln) for ln in (tmp_path / "out" / "hyps.jsonl").read_text().splitlines()]
  (err,) = [r for r in records if "error" in r]
  assert err["path"] == files["missing"] and err["error"] == "annotation[1]: no such file"

  # Deliberation: origin_transcripts are the first pass; an entry without one is an error record
  # naming it; the predictions carry origin_transcripts as theirs do.
  summary = runner.run(Echo("deliberation"), RunSettings(
      data=path, out=str(tmp_path / "delib"), quiet=True, predictions_json=str(preds)))
  records = {r["id"]: r for r in map(json.loads, (tmp_path / "delib" / "hyps.jsonl").read_text()
                                     .splitlines())}
  assert records["1-10-0002"]["hyp"] == "sea" and records["1-10-0001"]["hyp"] == "be"
  assert records["1-10-0000"]["error"] == (f"UtteranceError: annotation[2] ({files['a']}): no "
                                           f"\"origin_transcripts\"")
  assert summary["first_pass"] == f"{path}'s origin_transcripts"
  assert json.loads(preds.read_text()) == [
      {"path": files["c"], "text": "SEE", "llada_prediction": "sea", "origin_transcripts": "sea"},
      {"path": files["b"], "text": "BEE", "llada_prediction": "be", "origin_transcripts": "be"}]
  with pytest.raises(runner.EvalError, match="annotation\\[1\\]: no such file"):
    runner.run(Echo(), RunSettings(data=path, out=str(tmp_path / "s"), quiet=True, strict=True))
  # --limit: the first N usable entries in file order
  summary = runner.run(Echo(), RunSettings(data=path, out=str(tmp_path / "lim"), quiet=True,
                                           limit=2, predictions_json=str(preds)))
  assert [p["path"] for p in json.loads(preds.read_text())] == [files["c"], files["a"]]
  with pytest.raises(runner.EvalError, match="predictions_json"):
    runner.run(Echo(), RunSettings(data=path, out=str(tmp_path / "x"), quiet=True,
                                   predictions_json=str(tmp_path / "no" / "p.json")))


def test_deliberation_needs_a_first_pass(files, tmp_path):
  path = _write(tmp_path / "m.json", [{"path": files["a"], "text": "AY"}])
  with pytest.raises(runner.EvalError, match="origin_transcripts"):
    runner.run(Echo("deliberation"), RunSettings(data=path, out=str(tmp_path / "o"), quiet=True))
  base = ["--checkpoint", "x", "--out", "o", "--strategy", "deliberation"]
  assert cli.parse_args([*base, "--data", path]).first_pass is None  # the file's first pass
  with pytest.raises(SystemExit):
    cli.parse_args([*base, "--data", str(tmp_path)])  # a folder has none: --first-pass needed
  with pytest.raises(SystemExit):
    cli.parse_args(["--checkpoint", "x", "--out", "o", "--strategy", "whisper", "--data", path,
                    "--too-long", "error"])
