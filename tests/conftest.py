"""Test set-up: 8 simulated CPU devices, so sharded code is exercised on one CPU; shared fixtures
(real speech, the tiny espeak-ng corpus and its tokenizer that the training tests train on)."""

import os

# Must happen before jax is imported anywhere: XLA reads the flag once, at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The entry points' default compilation cache (parallel.compile_cache) is the user's: tests and
# their subprocesses stay out of it (those that want a cache give their own folder).
os.environ.setdefault("LLADA_JAX_CACHE_DIR", "off")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
  """Real speech: espeak-ng renders a sentence; 16 kHz float32 mono."""
  from llada_jax.data.audio import load_audio

  wav = tmp_path_factory.mktemp("speech") / "fox.wav"
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav),
                  "The quick brown fox jumps over the lazy dog."], check=True)
  return load_audio(wav)


def make_tokenizer(texts, out: Path) -> Path:
  """A tiny BPE over the corpus text: ids 0-3 are <s>, </s> (= tiny LM's EOS 1), <eot> (2), <unk>;
  119 tokens leave the tiny LM's mask id 127 outside the vocabulary."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(list(texts), trainers.BpeTrainer(
      vocab_size=119, special_tokens=["<s>", "</s>", "<eot>", "<unk>"]))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(str(out))
  return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  """The training tests' data: 8 train and 4 dev espeak-ng utterances (LibriSpeech layout) and a
  tokenizer over their text, for `--config tiny`."""
  if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng not installed (make system)")
  from llada_jax.models import text

  root = tmp_path_factory.mktemp("corpus")
  subprocess.run([sys.executable, str(ROOT / "tools" / "make_corpus.py"), "--out",
                  str(root / "c"), "--num-train", "8", "--num-dev", "4", "--num-test", "0",
                  "--jobs", "2"], check=True, capture_output=True)
  texts = [text.PROMPT]
  for f in (root / "c").rglob("*.trans.txt"):
    for ln in f.read_text().splitlines():  # tiny trains on raw text; the prompt is lower case
      texts += [ln.split(" ", 1)[1], text.normalize(ln.split(" ", 1)[1])]
  tok = make_tokenizer(texts, root / "tok")
  return {"train": str(root / "c" / "train-clean"), "dev": str(root / "c" / "dev-clean"),
          "tokenizer": str(tok)}
