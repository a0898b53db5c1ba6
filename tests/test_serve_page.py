"""The page `llada-jax serve` serves at `/`, in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) on a loopback server: the models are listed, an uploaded
file's transcript is rendered, and for a cascade the first pass and the deliberated text stand
side by side with the words deliberation changed marked; a screenshot is taken."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from support import Server

webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")
                                     and shutil.which("espeak-ng")),
                                reason="needs chromium, chromium-driver and espeak-ng "
                                       "(make system)")

LLADA = ["--gen-length", "16", "--steps", "8", "--hypothesis-tokens", "32"]


@pytest.fixture(scope="module")
def server(eval_checkpoints, tmp_path_factory):
  m = eval_checkpoints["models"]
  # a tiny random Whisper as the first pass keeps this to a few compiles; the page is the test
  with Server(["--model", f"whisper={m['whisper']}", "--model", f"llada={m['llada']}",
               "--cascade", "cascade=whisper,llada", "--max-batch", "2", "--bucketed",
               "--bucket-seconds", "2", *LLADA], tmp_path_factory.mktemp("page")) as s:
    yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
  yield driver
  driver.quit()


def transcribe_on_page(browser, server, model: str, audio) -> None:
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.select import Select
  from selenium.webdriver.support.ui import WebDriverWait

  browser.get(server.url + "/")
  wait = WebDriverWait(browser, 120)
  wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
  Select(browser.find_element(By.ID, "model")).select_by_value(model)
  browser.find_element(By.ID, "file").send_keys(str(audio))
  browser.find_element(By.ID, "go").click()
  wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "s of audio"))


def test_page_transcribes_an_upload_and_marks_what_deliberation_changed(browser, server,
                                                                        tmp_path):
  from selenium.webdriver.common.by import By

  wav = tmp_path / "speech.wav"
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "a quiet river by the garden"],
                 check=True)
  with open(wav, "rb") as fh:
    api = requests.post(server.url + "/v1/audio/transcriptions", files={"file": fh},
                        data={"model": "cascade", "response_format": "verbose_json"},
                        timeout=300).json()

  transcribe_on_page(browser, server, "whisper", wav)
  with open(wav, "rb") as fh:
    whisper = requests.post(server.url + "/v1/audio/transcriptions", files={"file": fh},
                            data={"model": "whisper"}, timeout=300).json()["text"]
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
