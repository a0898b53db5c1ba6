"""The config module: every run file in configs/ loads and round-trips through JSON; names, .py and
.json files; typed `--set`; errors name the field and the file; train.py exits 2 on them."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llada_jax import config_files
from llada_jax.config_files import ConfigError
from llada_jax.models.config import LMConfig, LoRAConfig, WhisperLLaDAConfig, from_dict, to_dict
from llada_jax.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", config_files.names())
def test_every_run_config_loads_and_round_trips(name):
  if name in ("demo", "experiment", "demo_smoke"):
    from llada_jax.demo.config import DemoConfig

    cfg = config_files.load(name, DemoConfig)
    assert config_files.from_dict(
        DemoConfig, json.loads(json.dumps(config_files.to_dict(cfg)))) == cfg
    for train in (cfg.llama, cfg.llada):
      config_files.load(train, TrainConfig)
    return
  cfg = config_files.load(name, TrainConfig)
  assert config_files.from_dict(
      TrainConfig, json.loads(json.dumps(config_files.to_dict(cfg)))) == cfg
  assert config_files.load(ROOT / "configs" / f"{name}.py", TrainConfig) == cfg


def test_paper_runs():
  paper = config_files.load("paper", TrainConfig)
  assert paper.audio_len == 352 and paper.model.lm.lora == LoRAConfig()
  assert config_files.load("baseline", TrainConfig).objective == "ar"
  h100 = config_files.load("paper_h100x8", TrainConfig)
  assert h100.mesh == (1, 8, 1) and h100.batch_size // 8 == 4 and h100.sharding == "lora_dp"
  assert h100.remat == "dots_saveable" and paper.remat == "full"
  assert dataclasses.replace(h100, mesh=paper.mesh, sharding=paper.sharding, remat="full") == paper


def test_model_config_json_is_tagged_and_nested_dataclasses_read_back():
  cfg = WhisperLLaDAConfig.tiny_test()
  data = to_dict(cfg)
  assert data["kind"] == "whisper_llada" and "kind" not in data["lm"]
  assert from_dict(json.loads(json.dumps(data))) == cfg
  lm = from_dict({"kind": "lm", "rope_scaling": {"factor": 4.0}, "lora": None})
  assert lm.rope_scaling.factor == 4.0 and lm == LMConfig(rope_scaling=lm.rope_scaling)
  with pytest.raises(ConfigError, match="kind"):
    from_dict({"kind": "nope"})
  with pytest.raises(ConfigError, match=r"unknown field\(s\) \['d_modle'\]"):
    from_dict({"kind": "lm", "d_modle": 3})


def test_overrides_are_typed():
  cfg = config_files.load("tiny", TrainConfig, [
      "mesh=2,2,2", "data.dev=none", "optimizer.peak_lr=1e-4", "model.lm.lora.rank=2",
      "full_finetune=true", "steps=7", "data.train=123", "model.lm.lora.targets=q_proj,v_proj"])
  assert cfg.mesh == (2, 2, 2) and cfg.data.dev is None and cfg.optimizer.peak_lr == 1e-4
  assert cfg.model.lm.lora.rank == 2 and cfg.full_finetune is True and cfg.steps == 7
  assert cfg.data.train == "123"  # a string field keeps the text as written
  assert cfg.model.lm.lora.targets == ("q_proj", "v_proj")
  assert config_files.load("tiny", TrainConfig, ["mesh=[1,-1,1]"]).mesh == (1, -1, 1)


def test_fields_that_change_together_can_be_set_in_any_order():
  for order in (["objective=ar", "model.lm.causal=true"], ["model.lm.causal=true", "objective=ar"]):
    cfg = config_files.load("tiny", TrainConfig, order)
    assert cfg.objective == "ar" and cfg.model.lm.causal
  with pytest.raises(ConfigError, match="needs a causal LM"):
    config_files.load("tiny", TrainConfig, ["objective=ar"])
  with pytest.raises(ConfigError, match="lora is None; set model.lm.lora itself first"):
    config_files.load("tiny", TrainConfig, ["model.lm.lora=none", "model.lm.lora.rank=2"])


@pytest.mark.parametrize("overrides, field", [
    (["optimizer.peak_lrr=1e-4"], "optimizer.peak_lrr"),
    (["stepz=3"], "stepz"),
    (["steps=abc"], "steps"),
    (["batch_size=2.5"], "batch_size"),
    (["async_save=1"], "async_save"),
    (["model.lm.n_layers=two"], "model.lm.n_layers"),
    (["objective=ar"], "objective"),
    (["weighting=uniform"], "weighting"),
    (["data.mel_frames=201"], "data.mel_frames"),
    (["data.text_form=lower"], "data.text_form"),
    (["data.response_eos=none"], "data.response_eos"),
    (["optimizer.cosine_from=end"], "optimizer.cosine_from"),
    (["mesh=2,2"], "mesh"),
    (["batch_size=8", "grad_accum=3"], "grad_accum"),
    (["steps"], "steps"),
    (["freeze_embeddings=true"], "freeze_embeddings"),
])
def test_bad_overrides_name_the_field_and_the_file(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
    config_files.load("tiny", TrainConfig, overrides)
  assert "configs/tiny.py" in str(e.value)


def test_json_and_py_files(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"base": "tiny", "optimizer": {"peak_lr": 0.5}, "steps": 9}))
  cfg = config_files.load(path, TrainConfig, ["seed=3"])
  assert (cfg.optimizer.peak_lr, cfg.steps, cfg.seed, cfg.batch_size) == (0.5, 9, 3, 8)
  path.write_text(json.dumps({"base": "tiny", "optimizer": {"peak": 0.5}}))
  with pytest.raises(ConfigError, match=r"c\.json.*optimizer\.peak"):
    config_files.load(path, TrainConfig)
  dump = tmp_path / "dump.json"
  config_files.save_json(cfg, dump)
  assert config_files.load(dump, TrainConfig) == cfg
  py = tmp_path / "c.py"
  py.write_text("import dataclasses\nfrom llada_jax import config_files\n"
                "from llada_jax.train.config import TrainConfig\n"
                "def config():\n"
                "  return dataclasses.replace(config_files.load('tiny', TrainConfig), steps=11)\n")
  assert config_files.load(py, TrainConfig).steps == 11
  typo = tmp_path / "typo.py"
  typo.write_text("from llada_jax.train.config import OptimizerConfig\n"
                  "def config():\n  return OptimizerConfig(peak_lrr=1.0)\n")
  with pytest.raises(ConfigError, match=r"typo\.py.*peak_lrr"):
    config_files.load(typo, TrainConfig)
  with pytest.raises(ConfigError, match="not a config name"):
    config_files.load("nope", TrainConfig)
  with pytest.raises(ConfigError, match="no such file"):
    config_files.load(tmp_path / "missing.py", TrainConfig)


@pytest.mark.parametrize("args, words", [
    (["--config", "nope"], ["nope", "not a config name"]),
    (["--config", "tiny", "--set", "steps=abc"], ["configs/tiny.py", "steps"]),
    (["--config", "TYPO"], ["typo.py", "stepz"]),
])
def test_train_py_exits_2_naming_the_field_and_file(args, words, tmp_path):
  typo = tmp_path / "typo.py"
  typo.write_text("from llada_jax.train.config import TrainConfig\n"
                  "def config():\n  return TrainConfig(stepz=1)\n")
  args = [str(typo) if a == "TYPO" else a for a in args]
  proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--workdir",
                         str(tmp_path / "w"), "--print-config"], capture_output=True, text=True,
                        cwd=ROOT)
  assert proc.returncode == 2, proc.stderr
  for word in words:
    assert word in proc.stderr
