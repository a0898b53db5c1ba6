"""The `llada-jax` command: one parser per subcommand, decoding options declared once (eval,
transcribe and serve accept the same ones, with the same meaning), help pages written for users;
serve's usage errors."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from llada_jax import decoding
from llada_jax.cli import eval as eval_cli
from llada_jax.cli import main as cli
from llada_jax.cli import options, serve, transcribe
from llada_jax.inference.llada import LLaDASettings

ROOT = Path(__file__).resolve().parents[1]
# eval's options that are about its data and outputs, not about decoding: transcribe has its own
# inputs (AUDIO…) and outputs (--out FILE.jsonl), and cuts long audio into windows (no --too-long)
EVAL_ONLY = {"--data", "--out", "--limit", "--predictions-json", "--strict", "--tfds-data-dir",
             "--first-pass", "--too-long", "--per-device-batch", "--strategy"}


def parser_of(module) -> argparse.ArgumentParser:
  return options.command(module, argparse.ArgumentParser(prog=f"llada-jax {module.NAME}"))


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
  return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


# ... and serve's: it takes models by name (--model, not --checkpoint), batches by --max-batch,
# and prints no progress
SERVE_NOT = {"--checkpoint", "--batch-size", "--quiet"}


@pytest.mark.parametrize("module", [transcribe, serve])
def test_every_decoding_option_of_eval_is_the_commands_with_the_same_meaning(module):
  ev, tr = actions(parser_of(eval_cli)), actions(parser_of(module))
  shared = set(ev) - EVAL_ONLY - {"--help"} - (SERVE_NOT if module is serve else set())
  assert {options.flag(d) for d in options.DECODING_OPTIONS} <= shared
  same = {options.flag(d) for d in options.DECODING_OPTIONS} | {
      "--mesh", "--dtype", "--sharding", "--attention", "--no-merge-lora", "--no-compile-cache"}
  for name in sorted(shared):
    assert name in tr, f"eval's {name} is missing from {module.NAME}"
    if name not in same:  # --batch-size, --quiet, --checkpoint: each command's own sense
      continue
    a, b = ev[name], tr[name]
    for field in ("dest", "type", "choices", "default", "nargs", "const", "help"):
      assert getattr(a, field) == getattr(b, field), (name, field)


@pytest.mark.parametrize("argv, words", [
    ([], "--model NAME=CKPT: nothing to serve"),
    (["--model", "a=CKPT_W", "--model", "a=CKPT_W"], "--model a: named twice"),
    (["--model", "w=/no/such/ckpt"], "--model w=/no/such/ckpt:"),
    (["--model", "w=CKPT_W", "--cascade", "c=w,x"], "two served --model names"),
    (["--model", "w=CKPT_W", "--cascade", "c=w,w"], "w is a whisper; deliberation needs"),
    (["--model", "w=CKPT_W", "--mask-ratio", "0.5"], "--mask-ratio: only with --cascade"),
    (["--model", "w=CKPT_W", "--max-batch", "0"], "--max-batch 0: expected > 0"),
    (["--model", "w=CKPT_W", "--mesh", "64,1,1"], "--mesh / --max-batch"),
    (["--model", "w=CKPT_W", "--schedule", "block"],
     "--schedule block: no --model is a Whisper-LLaDA"),
])
def test_serve_usage_errors_exit_2_naming_the_option(argv, words, eval_checkpoints, capsys):
  argv = [a.replace("CKPT_W", str(eval_checkpoints["models"]["whisper"])) for a in argv]
  assert cli.main(["serve", *argv]) == 2
  assert words in capsys.readouterr().err


def test_decoding_options_build_the_settings_fields():
  args = parse_eval("--strategy", "semi_ar", "--gen-length", "64", "--block-length", "16",
                    "--threshold", "0.9", "--dual-cache", "--seed", "3")
  s = options.llada_settings(args, "semi_ar")
  assert s.strategy == "semi_ar" and s.seed == 3
  assert s.decoding == decoding.DiffusionSettings(gen_length=64, steps=None, block_length=16,
                                                  threshold=0.9, cache=True, dual_cache=True)
  args = parse_eval("--strategy", "deliberation", "--first-pass", "h.jsonl", "--steps", "32",
                    "--mask-ratio", "0.5", "--deliberation-strategy", "diffusion", "--text-only")
  s = options.llada_settings(args, "deliberation")
  assert s.strategy == "deliberation" and s.text_only
  assert s.decoding == decoding.DeliberationSettings(strategy="diffusion", mask_ratio=0.5,
                                                     steps=32)
  # nothing given: the paper's settings, lengths from the checkpoint
  for strategy in ("ar", "diffusion", "semi_ar", "deliberation"):
    args = parse_eval("--strategy", strategy, "--first-pass", "h.jsonl")
    assert options.llada_settings(args, strategy) == LLaDASettings.paper(strategy)


def parse_eval(*argv: str) -> argparse.Namespace:
  return eval_cli.parse_args(["--checkpoint", "c", "--data", "d", "--out", "o", *argv])


@pytest.mark.parametrize("argv, words", [
    (["--strategy", "whisper", "--steps", "8"], "--steps: for the Whisper-LLaDA"),
    (["--strategy", "diffusion", "--bucketed"], "--bucketed: for --strategy whisper"),
    (["--strategy", "semi_ar", "--gen-length", "30", "--block-length", "8", "--steps", "8"],
     "gen_length 30 is not a multiple of block_length 8"),
])
def test_options_of_another_strategy_are_usage_errors(argv, words, capsys):
  if "--gen-length" in argv:  # settings that cannot be: a ValueError of the settings, exit 2
    with pytest.raises(options.UsageError, match=words):
      options.llada_settings(parse_eval(*argv), "semi_ar")
    return
  with pytest.raises(SystemExit):
    parse_eval(*argv)
  assert words in capsys.readouterr().err


def test_help_pages_speak_to_users(capsys):
  assert cli.main(["--help"]) == 0
  page = capsys.readouterr().out
  for module in cli.COMMANDS:
    assert f"llada-jax {module.NAME}" in page and module.HELP.split(" (")[0] in " ".join(
        page.split())
    assert cli.main([module.NAME, "--help"]) == 0
    sub = capsys.readouterr().out
    assert f"llada-jax {module.NAME} " in sub, f"{module.NAME}: no example"  # an example line
    assert "COMMANDS" not in sub and "add_arguments" not in sub  # no implementation notes
  assert cli.main([]) == 2


@pytest.mark.parametrize("script", ["train.py", "eval.py", "tools/convert.py", "tools/plan.py"])
def test_scripts_are_the_subcommands(script):
  proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                        text=True, check=True)
  name = {"train.py": "train", "eval.py": "eval", "tools/convert.py": "convert",
          "tools/plan.py": "plan"}[script]
  assert proc.stdout.startswith(f"usage: llada-jax {name}")
