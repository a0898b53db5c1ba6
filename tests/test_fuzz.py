"""The parsers of user input under hostile inputs: each crash `tools/fuzz.py` found, as explicit
bytes, ends in the module's named error naming the input; and a short derandomised fuzz run per
target (`llada_jax.testing.fuzz_targets`) finds nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llada_jax import config_files
from llada_jax.config_files import ConfigError
from llada_jax.convert import ConversionError, open_source
from llada_jax.data.audio import AudioError, load_audio
from llada_jax.data.files import FilesSource
from llada_jax.data.manifest import ManifestError, ManifestSource
from llada_jax.evaluation.inputs import EvalError, read_first_pass
from llada_jax.models import checkpoint
from llada_jax.models.checkpoint import CheckpointError
from llada_jax.testing import fuzz, fuzz_targets
from llada_jax.train.config import TrainConfig

DEEP = b"[" * 100_000 + b"]" * 100_000  # past the JSON decoder's recursion limit
LONG_INT = b"9" * 5000  # past Python's 4300-digit limit on int()


def _raises(error: type[Exception], path, fn, *args):
  with pytest.raises(error) as e:
    fn(*args)
  assert str(path) in str(e.value), e.value
  return e.value


# -- audio ----------------------------------------------------------------------------------------

def test_flac_with_a_forged_frame_count_is_not_a_256_gib_allocation(tmp_path):
  sf.write(tmp_path / "a.flac", np.zeros(800, np.float32), 16000, subtype="PCM_16")
  data = bytearray((tmp_path / "a.flac").read_bytes())
  packed = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, bits, 36-bit count
  data[18:26] = (packed | ((1 << 36) - 6)).to_bytes(8, "big")
  (tmp_path / "b.flac").write_bytes(data)
  assert sf.info(tmp_path / "b.flac").frames > 1 << 35
  _raises(AudioError, tmp_path / "b.flac", load_audio, tmp_path / "b.flac")


# tools/fuzz.py audio_pyav, minimised: an mp3 (unreadable by libsndfile) whose frames switch from
# mono to stereo; FFmpeg's parts did not concatenate (numpy ValueError).
MP3_MONO_THEN_STEREO = base64.b64decode(
  "SUQzBAAAAAAAI1RTU0UAAAAPAAADTGF2ZjYyLjEyLjEwMgAAAAAAAAAAAAAAAPNYwAAAAAAAAAAAAEluZm8AAAAP"
  "AAAACAAABBQARkZGRkZGRkZGRkZGYWFhYWFhYWFhYWFhe3t7e3t7e3t7e3t7e5aWlpaWlpaWlpaWlrCwsLCwsLCw"
  "sLCwsLDLy8vLy8vLy8vLy8vl5eXl5eXl5eXl5eXl////////////////AAAAAExhdmYAAAAAAAAAAAAAAAAAAAAA"
  "ACQDQAAAAAAAAAQUY/zBCAAAAAAAAAAAAAAA//M4xAAUqIKQH08YADG25IDTNM0zTNM00PQ9RnIQQegyEyEPAE4A"
  "WA5g3A1AhhCC4IYrHkR3AwMDB8PqBAEHYP+GJT38p5/lPP9Hv6OCAPg/E4EBB0MA+H6wICHB/o96gCkYDAgEAYEA"
  "oAAl//M4xAAAAAAAAAAADBhZPsUfmaACT/f//DUz938VKTOGUUNAFpQmGBUCG2igQMMpBQGaAYR0G/GoxwsoVsTP"
  "+QUgJkTxFv/JkipATIixFv/zEul0yLxeR/gqIgqCv/LBUFREeDX/5YKhotX///epAA==")


def test_mp3_switching_channels_mid_stream(tmp_path):
  (tmp_path / "a.mp3").write_bytes(MP3_MONO_THEN_STEREO)
  error = _raises(AudioError, tmp_path / "a.mp3", load_audio, tmp_path / "a.mp3")
  assert "changes from 1 channel(s)" in str(error)


# -- path lists, first passes, Diffusion-ASR data files -------------------------------------------

def test_jsonl_list_nested_too_deeply_is_an_error_record(tmp_path):
  sf.write(tmp_path / "a.wav", np.zeros(160, np.float32), 16000)
  (tmp_path / "l.jsonl").write_bytes(json.dumps({"path": str(tmp_path / "a.wav")}).encode()
                                     + b"\n" + DEEP + b"\n" + LONG_INT + b"\n")
  source = FilesSource(tmp_path / "l.jsonl")
  assert len(source) == 1
  assert [e.path for e in source.errors] == [f"{tmp_path / 'l.jsonl'}:{n}" for n in (2, 3)]


@pytest.mark.parametrize("line", [b"null", b'{"id": [1], "hyp": "a"}', b'{"id": "a", "hyp": 1}',
                                  DEEP, LONG_INT, b"\xff"])
def test_first_pass_rows_that_are_not_id_and_hyp(tmp_path, line):
  (tmp_path / "hyps.jsonl").write_bytes(b'{"id": "u1", "hyp": "x"}\n' + line + b"\n")
  _raises(EvalError, tmp_path / "hyps.jsonl", read_first_pass, tmp_path / "hyps.jsonl")


def test_first_pass_leaves_error_records_out(tmp_path):
  (tmp_path / "hyps.jsonl").write_text('{"id": "u1", "hyp": "x"}\n'
                                       '{"id": "u2", "hyp": null, "error": "AudioError: …"}\n')
  assert read_first_pass(tmp_path / "hyps.jsonl") == {"u1": "x"}


@pytest.mark.parametrize("body", [b'{"annotation": ' + DEEP + b"}", LONG_INT])
def test_manifest_unreadable_json(tmp_path, body):
  (tmp_path / "d.json").write_bytes(body)
  _raises(ManifestError, tmp_path / "d.json", ManifestSource, tmp_path / "d.json")


# -- run configs and --set ------------------------------------------------------------------------

def _tiny_train() -> TrainConfig:
  return fuzz_targets._train_config()


@pytest.mark.parametrize("body", [DEEP, b"\x80{}", b'{"steps": ' + LONG_INT + b"}",
                                  b'{"base": 5}', b'{"base": "' + b"x" * 5000 + b'.json"}'])
def test_config_file_unreadable(tmp_path, body):
  (tmp_path / "c.json").write_bytes(body)
  _raises(ConfigError, tmp_path / "c.json", config_files.load, tmp_path / "c.json", TrainConfig)


def test_config_file_whose_base_is_itself(tmp_path):
  """Found in review, not by the fuzzer: `base` cycles recursed until RecursionError."""
  (tmp_path / "a.json").write_text(json.dumps({"base": str(tmp_path / "b.json")}))
  (tmp_path / "b.json").write_text(json.dumps({"base": str(tmp_path / "a.json")}))
  error = _raises(ConfigError, tmp_path / "a.json", config_files.load, tmp_path / "a.json",
                  TrainConfig)
  assert "cycle" in str(error)


@pytest.mark.parametrize("value", ["[" * 5000, "9" * 5000])
def test_set_value_nested_too_deeply_or_too_long(value):
  with pytest.raises(ConfigError, match="steps="):
    config_files.override(_tiny_train(), [f"steps={value}"])


def test_from_dict_of_a_non_object():
  with pytest.raises(ConfigError, match="model.json: expected a JSON object"):
    config_files.from_dict(TrainConfig, None, "model.json")


# -- converted checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
  seeds = tmp_path_factory.mktemp("ckpt")
  fuzz_targets.CHECKPOINT.setup(seeds)
  return seeds / "model"


def _with(model_dir: Path, tmp: Path, name: str, body: bytes) -> Path:
  import shutil
  out = tmp / "model"
  shutil.copytree(model_dir, out)
  (out / name).write_bytes(body)
  return out


@pytest.mark.parametrize("name, body, error", [
  ("config.json", b"null", ConfigError),
  ("config.json", b"", ConfigError),
  ("config.json", b"\xff", ConfigError),
  ("config.json", DEEP, ConfigError),
  ("source.json", b"{", CheckpointError),
  ("source.json", b"\x80", CheckpointError),
  ("source.json", b"[]", CheckpointError),
  ("params/index.json", b"", CheckpointError),
  ("params/index.json", DEEP, CheckpointError),
  ("params/index.json", b'{"parts": 1, "params": null}', CheckpointError),
  ("params/index.json", b'{"parts": [], "params": {}}', CheckpointError),
  ("params/index.json", b'{"params": {}}', CheckpointError),
  ("params/index.json", b'{"parts": 1, "params": {"a": {"shape": [1], "dtype": "f"}}}',
   CheckpointError),
  ("params/index.json", b'{"parts": 1, "params": {"a": {"part": 0, "dtype": "f"}}}',
   CheckpointError),
  ("params/index.json", b'{"parts": 1, "params": {"a": []}}', CheckpointError),
  ("params/index.json", b'{"parts": 1, "params": {"a": {"part": 1, "shape": [], "dtype": "f"}}}',
   CheckpointError),
])
def test_checkpoint_folder_with_a_broken_file(model_dir, tmp_path, name, body, error):
  path = _with(model_dir, tmp_path, name, body)

  def load(p):
    checkpoint.read_source_info(p)
    checkpoint.load(p)
  _raises(error, path, load, path)


def test_checkpoint_index_naming_a_missing_part(model_dir, tmp_path):
  """tools/fuzz.py checkpoint: a part the index names but the folder lacks reached orbax, whose
  FileNotFoundError named the part, not as the checkpoint's error."""
  index = json.loads((model_dir / "params" / "index.json").read_text())
  index["parts"] += 1
  next(iter(index["params"].values()))["part"] = index["parts"] - 1
  path = _with(model_dir, tmp_path, "params/index.json", json.dumps(index).encode())
  error = _raises(CheckpointError, path, checkpoint.load, path)
  assert f"part-{index['parts'] - 1:05d} is missing" in str(error)


# -- CTranslate2, safetensors ---------------------------------------------------------------------

def _ct2_dir(tmp: Path, config: bytes = b"{}", tokenizer: bytes | None = None) -> Path:
  data, _ = fuzz_targets.write_ct2(fuzz_targets._ct2_variables(),
                                   {"decoder/projection/weight": "decoder/embeddings/weight"})
  folder = tmp / "ct2"
  folder.mkdir()
  (folder / "model.bin").write_bytes(data)
  (folder / "config.json").write_bytes(config)
  if tokenizer is not None:
    (folder / "tokenizer.json").write_bytes(tokenizer)
  return folder


@pytest.mark.parametrize("config, tokenizer", [
  (b'{"suppress_ids": null}', None),
  (b'{"suppress_ids_begin": [1, "a"]}', None),
  (DEEP, None),
  (b"{}", b'{"added_tokens": null}'),
  (b"{}", b'{"added_tokens": [null]}'),
  (b"{}", b'{"added_tokens": [{"content": "<|endoftext|>"}]}'),
  (b"{}", DEEP),
])
def test_ct2_folder_with_broken_json(tmp_path, config, tokenizer):
  folder = _ct2_dir(tmp_path, config, tokenizer)
  _raises(ConversionError, folder, open_source, folder)


def test_ct2_seed_reads_and_ignores_odd_added_tokens(tmp_path):
  tokenizer = b'{"added_tokens": [{"content": ["x"]}, {"content": "<|endoftext|>", "id": 9}]}'
  with open_source(_ct2_dir(tmp_path, tokenizer=tokenizer)) as src:
    assert src.config["d_model"] == 8 and src.get("proj_out.weight").shape == (16, 8)
    assert src.config["eos_token_id"] == 9


@pytest.mark.parametrize("weight_map", [{"a": ["x"]}, {"a": None}, {"a": ""}, {"a": "m-" * 200}])
def test_safetensors_index_naming_no_file(tmp_path, weight_map):
  (tmp_path / "config.json").write_text('{"model_type": "llama"}')
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _raises(ConversionError, tmp_path, open_source, tmp_path)


def test_safetensors_header_nested_too_deeply(tmp_path):
  (tmp_path / "config.json").write_bytes(DEEP)
  (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
  _raises(ConversionError, tmp_path, open_source, tmp_path)


# -- GGUF -----------------------------------------------------------------------------------------

def _gguf(tmp: Path) -> tuple[Path, bytes]:
  fuzz_targets.write_gguf(tmp / "seed.gguf")
  return tmp / "bad.gguf", (tmp / "seed.gguf").read_bytes()


@pytest.mark.parametrize("at, value", [(8, 1 << 62), (16, 1 << 62), (24, 1 << 40)])
def test_gguf_forged_counts_and_lengths(tmp_path, at, value):
  """Tensor count, metadata count, first key length: checked against the file size."""
  from llada_jax.convert.gguf import check_header
  path, data = _gguf(tmp_path)
  path.write_bytes(data[:at] + value.to_bytes(8, "little") + data[at + 8:])
  _raises(ConversionError, path, check_header, path)


def test_gguf_truncated_tensor_data(tmp_path):
  from llada_jax.convert.gguf import check_header
  path, data = _gguf(tmp_path)
  check_header(tmp_path / "seed.gguf")
  path.write_bytes(data[:-4])
  _raises(ConversionError, path, check_header, path)


@pytest.mark.parametrize("key", [b"llama.block_count", b"llama.embedding_length",
                                 b"llama.attention.head_count_kv"])
def test_gguf_forged_model_size_is_refused_before_transformers_builds_it(tmp_path, key):
  """A block count of 3674210305 made transformers build layers until memory ran out."""
  path, data = _gguf(tmp_path)
  at = data.index(key) + len(key) + 4  # the uint32 value after the key and its type
  path.write_bytes(data[:at] + (3674210305).to_bytes(4, "little") + data[at + 4:])
  error = _raises(ConversionError, path, open_source, path)
  assert key.decode() in str(error)


def test_gguf_without_its_block_count_is_refused(tmp_path):
  """tools/fuzz.py gguf, minimised: a NUL over the key's first letter; transformers then built
  LLaMA's default (32 layers of width 4096) and ran past the time bound."""
  path, data = _gguf(tmp_path)
  path.write_bytes(data.replace(b"llama.block_count", b"\x00lama.block_count"))
  error = _raises(ConversionError, path, open_source, path)
  assert "lacks llama.block_count" in str(error)


# -- a short fuzz run per target ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(fuzz_targets.TARGETS))
def test_fuzz_target_briefly(tmp_path, name):
  target = fuzz_targets.TARGETS[name]
  report = fuzz.fuzz(target, tmp_path, seconds=60, max_examples=EXAMPLES.get(name, 25),
                     derandomize=True)
  assert not report.failures, fuzz.summary(report)


EXAMPLES = {"checkpoint": 10, "gguf": 10, "audio_pyav": 15}
