"""The library's shape, checked by reading its source (no model): error messages name
settings fields and arguments, not command-line flags; no module imports itself back; the package
root loads its names on first use."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llada_jax"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _modules() -> dict[str, Path]:
  """Module name → file, for every module of the package (a package is its __init__)."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


def _strings(node: ast.AST) -> list[str]:
  """Every string constant under `node`, f-strings' literal parts included."""
  return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
          and isinstance(n.value, str)]


def test_library_errors_name_no_command_line_flags():
  """A Python caller of `llada_jax.inference.open(...)` never typed `--gen-length`: messages of
  errors raised outside llada_jax/cli/ name the settings field, argument or file instead."""
  hits = []
  for name, path in _modules().items():
    if name == "llada_jax.cli" or name.startswith("llada_jax.cli."):
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if not isinstance(node, ast.Raise) or node.exc is None:
        continue
      for s in _strings(node.exc):
        for flag in FLAG.findall(s):
          hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {flag} in {s!r}")
  assert not hits, "command-line flags in library errors:\n" + "\n".join(hits)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
  """The package modules `name` imports, at any level (function bodies included)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from a.b import c`: the module a.b.c where c is one, else a.b itself
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:  # `import a.b.c` of a non-module: its nearest module
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` (as a path that ends where it starts), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  stack: list[str] = []

  def visit(n: str) -> list[str] | None:
    state[n] = 1
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state and (found := visit(m)):
        return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state and (found := visit(n)):
      return found
  return None


def test_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
  """No module of llada_jax imports (at any level, function-level imports included) a module that
  imports it back: every import of the package is a layer below its importer."""
  modules = _modules()
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_package_root_loads_its_names_on_first_use():
  """`import llada_jax` (and a light sub-module such as llada_jax.data.audio, which
  tools/make_corpus.py and its worker processes import) loads no JAX; each public name then
  resolves to the object its module defines."""
  import subprocess
  import sys

  probe = ("import sys, llada_jax, llada_jax.data.audio\n"
           "heavy = [m for m in ('jax', 'flax', 'orbax', 'transformers') if m in sys.modules]\n"
           "assert not heavy, heavy\n"
           "import importlib\n"
           "for name in llada_jax.__all__:\n"
           "  where = llada_jax._EXPORTS[name]\n"
           "  module, attr = (where, name) if isinstance(where, str) else where\n"
           "  assert getattr(llada_jax, name) is getattr(importlib.import_module(module), attr)\n"
           "assert sorted(llada_jax.__all__) == sorted(llada_jax._EXPORTS)\n"
           "assert set(llada_jax.__all__) <= set(dir(llada_jax))\n"
           "try:\n"
           "  llada_jax.no_such_name\n"
           "except AttributeError as e:\n"
           "  assert 'no_such_name' in str(e)\n"
           "else:\n"
           "  raise AssertionError('no error')\n")
  proc = subprocess.run([sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
