"""The demo's report (llada_jax.demo.report): which utterances count, each system's first
pass, aliases, findings.

The hypotheses are built so every error count is known: the references are four distinct words
("alpha bravo charlie delta" …) and a hypothesis with k of them replaced by "zulu" has k errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llada_jax.demo import report, significance

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "bravo", "charlie", "delta"]
IDS = [f"1-1-{i:04d}" for i in range(6)]

# Substituted words per utterance and system; whisper_cut is the first pass of the tiny.en rows,
# llama_ar the first pass of the cascade rows.
ERRORS = {
    "whisper": [2, 1, 0, 1, 4, 1],
    "whisper_cut": [1, 1, 0, 1, 2, 1],
    "llama_ar": [3, 2, 2, 3, 4, 2],
    "diffusion": [2, 2, 1, 3, 3, 2],
    "deliberation_diffusion_random": [1, 0, 0, 1, 1, 1],
    "deliberation_text_only_ratio0.3": [2, 1, 1, 1, 2, 2],
    "cascade_diffusion_audio_ratio0.3": [2, 2, 1, 2, 3, 2],
    "cascade_diffusion_text_only_ratio0.3": [3, 3, 2, 3, 4, 2],
    "cascade_semi_ar_audio": [2, 2, 2, 2, 3, 2],
    "cascade_semi_ar_text_only": [3, 3, 3, 3, 3, 3],
}


def _hyp(k: int) -> str:
  return " ".join(["zulu"] * k + WORDS[k:])


def _run(tmp_path: Path, out: Path | None = None, errors: dict | None = None
         ) -> tuple[Path, dict]:
  out = out or tmp_path / "demo"
  errors = errors or ERRORS
  results = {}
  for name, errs in errors.items():
    folder = out / "eval" / name
    folder.mkdir(parents=True)
    rows = [{"id": i, "ref": " ".join(WORDS).upper(), "hyp": _hyp(k)} for i, k in zip(IDS, errs)]
    if name == "diffusion":  # a failed utterance: no system is scored on it
      rows[-1] = {"id": IDS[-1], "ref": rows[-1]["ref"], "error": "audio longer than mel_frames"}
    (folder / "hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results[name] = {"wer": None, "rtf": 0.1, "steps": 24}
  for name in errors:
    if "ratio" in name:
      results[name]["mask_ratio"] = 0.3
    if name.startswith("cascade_"):
      results[name]["first_pass"] = "llama_ar"
  # aliases: systems scored from another system's folder
  results["diffusion_steps24"] = dict(results["diffusion"])
  results["deliberation_diffusion_random_ratio0.3"] = {**results["deliberation_diffusion_random"],
                                                      "mask_ratio": 0.3}
  for run_name in ("train_llama", "train_llada"):
    (out / run_name).mkdir()
    (out / run_name / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in (1, 2, 3)))
  info = {"machine": "test", "date": "2026-11-26", "config": {}, "wall_seconds": 1.0}
  report.finish(out, results, info, gen_length=16)
  return out, json.loads((out / "results.json").read_text())


def _errors(name: str) -> np.ndarray:
  return np.asarray(ERRORS[name][:-1])  # the failed utterance is dropped for every system


def test_every_system_is_scored_on_the_utterances_all_of_them_transcribed(tmp_path):
  _, report = _run(tmp_path)
  systems = report["systems"]
  for name in ERRORS:
    assert systems[name]["num_scored"] == len(IDS) - 1
    assert systems[name]["wer"] == pytest.approx(_errors(name).sum() / (4 * (len(IDS) - 1)))
  assert systems["diffusion_steps24"]["wer"] == systems["diffusion"]["wer"]
  assert (systems["deliberation_diffusion_random_ratio0.3"]["wer"]
          == systems["deliberation_diffusion_random"]["wer"])


def test_each_system_is_compared_with_its_own_first_pass(tmp_path):
  _, report = _run(tmp_path)
  systems = report["systems"]
  tiny = systems["deliberation_diffusion_random"]["vs_first_pass"]
  assert tiny["relative_gain"] == pytest.approx(
      1 - _errors("deliberation_diffusion_random").sum() / _errors("whisper_cut").sum())
  assert tiny == significance.paired_bootstrap(_errors("whisper_cut"),
                                               _errors("deliberation_diffusion_random"))
  cascade = systems["cascade_diffusion_audio_ratio0.3"]["vs_first_pass"]
  assert cascade["relative_gain"] == pytest.approx(
      1 - _errors("cascade_diffusion_audio_ratio0.3").sum() / _errors("llama_ar").sum())
  assert cascade["improved"] == 4 and cascade["worsened"] == 0


def test_findings_name_the_best_systems_and_pair_audio_with_text_only(tmp_path):
  out, report = _run(tmp_path)
  f = report["findings"]
  assert report["first_pass"] == "whisper_cut"
  assert f["best_deliberation"] in ("deliberation_diffusion_random",
                                    "deliberation_diffusion_random_ratio0.3")
  assert f["deliberation_relative_gain"] == pytest.approx(1 - 3 / 5)
  assert f["best_text_only"] == "deliberation_text_only_ratio0.3"
  pair = f["audio_vs_text_only"]["ratio0.3"]
  assert pair == significance.paired_bootstrap(_errors("deliberation_text_only_ratio0.3"),
                                               _errors("deliberation_diffusion_random"))
  c = f["cascade"]
  assert c["best"] == "cascade_diffusion_audio_ratio0.3"
  assert c["first_pass_wer"] == pytest.approx(14 / 20)
  assert c["relative_gain"] == pytest.approx(1 - 10 / 14)
  assert c["audio_vs_text_only"]["cascade_diffusion_audio_ratio0.3"]["relative_gain"] == (
      pytest.approx(1 - 10 / 15))
  assert c["audio_vs_text_only"]["cascade_semi_ar_audio"]["relative_gain"] == (
      pytest.approx(1 - 11 / 15))
  assert all(Path(p).is_file() for p in report["plots"])
  assert not list(out.glob("*.tmp"))


def test_seeds_report_each_finding_per_seed_and_whether_it_holds_for_all(tmp_path):
  from llada_jax.demo import seeds

  # seed 1: the same runs except a Whisper-LLaDA that now loses to the Whisper-LLaMA
  other = {**ERRORS, "diffusion": [4, 3, 3, 4, 4, 2]}
  runs = {0: _run(tmp_path, tmp_path / "seeds" / "seed0")[1],
          1: _run(tmp_path, tmp_path / "seeds" / "seed1", other)[1]}
  summary = seeds.summarize(tmp_path / "seeds", [0, 1])
  rows = {r["name"]: r for r in summary["findings"]}
  # only findings whose two systems every seed ran (this demo swept ratio 0.3 alone)
  assert set(rows) == {"llada_vs_llama", "deliberation_0.3", "audio_vs_text_only_0.3",
                       "cascade_semi_ar", "cascade_0.3", "cascade_audio_vs_text_only"}
  errs = {0: ERRORS, 1: other}
  for seed in (0, 1):
    drop = lambda name, seed=seed: np.asarray(errs[seed][name][:-1])  # noqa: E731
    assert rows["llada_vs_llama"]["seeds"][seed] == significance.paired_bootstrap(
        drop("llama_ar"), drop("diffusion"))
    assert rows["cascade_0.3"]["seeds"][seed] == runs[seed]["systems"][
        "cascade_diffusion_audio_ratio0.3"]["vs_first_pass"]
  assert rows["llada_vs_llama"]["seeds"][0]["relative_gain"] > 0
  assert rows["llada_vs_llama"]["seeds"][1]["relative_gain"] < 0
  assert rows["llada_vs_llama"]["verdict"] == "depends on the seed"
  cells = list(rows["cascade_0.3"]["seeds"].values())
  assert rows["cascade_0.3"]["verdict"] == seeds.verdict(cells) and cells[0] == cells[1]
  assert summary["wer"]["diffusion"] == {0: runs[0]["systems"]["diffusion"]["wer"],
                                         1: runs[1]["systems"]["diffusion"]["wer"]}
  md = (tmp_path / "seeds" / "seeds.md").read_text()
  assert "| seed 0 | seed 1 |" in md and "depends on the seed" in md
  assert json.loads((tmp_path / "seeds" / "seeds.json").read_text())["seeds"] == [0, 1]


def test_seed_verdicts():
  from llada_jax.demo.seeds import verdict

  cell = lambda gain, lo, hi: {"relative_gain": gain, "ci95": [lo, hi]}  # noqa: E731
  assert verdict([cell(0.1, 0.02, 0.2), cell(0.05, 0.01, 0.1)]) == "holds"
  assert verdict([cell(-0.1, -0.2, -0.02), cell(-0.05, -0.1, -0.01)]) == "reversed"
  assert verdict([cell(0.1, 0.02, 0.2), cell(0.05, -0.01, 0.1)]) == "same sign"
  assert verdict([cell(0.1, 0.02, 0.2), cell(-0.05, -0.1, 0.01)]) == "depends on the seed"
  assert verdict([cell(0.1, 0.02, 0.2), cell(0.0, -0.1, 0.1)]) == "depends on the seed"
  assert verdict([cell(0.0, 0.0, 0.0), cell(0.0, 0.0, 0.0)]) == "no seed significant"
  assert verdict([cell(0.05, -0.1, 0.2), cell(-0.02, -0.1, 0.1)]) == "no seed significant"


def test_demo_seeds_command_reports_existing_runs_and_refuses_a_repeated_seed(tmp_path, capsys):
  import importlib.util

  spec = importlib.util.spec_from_file_location("demo_tool", ROOT / "tools" / "demo.py")
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  assert demo.main(["--seeds", "0", "0", "--out", str(tmp_path / "x")]) == 2
  assert "a seed is repeated" in capsys.readouterr().err
  for seed in (0, 1):
    _run(tmp_path, tmp_path / "seeds" / f"seed{seed}")
  assert demo.main(["--seeds", "0", "1", "--report-only", "--out", str(tmp_path / "seeds")]) == 0
  assert "| finding (relative WER reduction [95 % CI]) | seed 0 | seed 1 | verdict |" in (
      capsys.readouterr().out)
  assert (tmp_path / "seeds" / "seeds.md").is_file()
