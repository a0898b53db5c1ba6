"""The wheel: built from the files a build reads (nothing else of the checkout), installed into a
fresh venv without downloading anything, and its `llada-jax` command run from outside the source
tree. The new venv sees the test venv's packages through a .pth line (a plain path: the test
venv's own .pth files, its editable llada-jax among them, are not run), so what is tested is the
wheel's own contents: modules, the serve page, the run configs, the console entry point."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "llada_jax", "configs")
# What the installed copy must answer, run by its own interpreter.
PROBE = """
import importlib.resources, json, llada_jax
from llada_jax import config_files
print(json.dumps({
  "package": llada_jax.__file__,
  "configs": str(config_files.resolve("paper")),
  "names": config_files.names(),
  "page": importlib.resources.files("llada_jax.serve").joinpath("static/index.html").is_file(),
}))
"""


def _run(args, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)


def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_source_tree(tmp_path):
  pytest.importorskip("build")
  src = tmp_path / "src"
  src.mkdir()
  for name in BUILD_INPUTS:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy2(ROOT / name, src / name)
  # --no-isolation: the build backend (setuptools) comes from this venv, not from an index
  built = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                tmp_path / "dist", src])
  assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
  (wheel,) = (tmp_path / "dist").glob("llada_jax-*.whl")

  env_dir = tmp_path / "env"
  venv.create(env_dir, with_pip=False)
  python = env_dir / "bin" / "python"
  site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip())
  installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "--no-compile", wheel])
  assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
  # The dependencies, after the install: pip must not see the test venv's llada-jax (editable)
  # and take it for this one.
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  (site / "test_venv_packages.pth").write_text("\n".join(sorted(ours)) + "\n")

  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLADA_CONFIG_DIR")}
  helped = _run([env_dir / "bin" / "llada-jax", "--help"], cwd=outside, env=env)
  assert helped.returncode == 0, helped.stderr[-3000:]
  for command in ("convert", "train", "eval", "transcribe", "serve", "plan"):
    assert command in helped.stdout
  probe = _run([python, "-c", PROBE], cwd=outside, env=env)
  assert probe.returncode == 0, probe.stderr[-3000:]
  got = json.loads(probe.stdout.strip().splitlines()[-1])
  # the installed copy, not the checkout (nor the test venv's editable install)
  assert Path(got["package"]).is_relative_to(site), got["package"]
  assert Path(got["configs"]) == site / "llada_jax" / "configs" / "paper.py"
  assert {"paper", "baseline", "tiny", "demo"} <= set(got["names"])
  assert got["page"]
