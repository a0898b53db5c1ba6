"""Are two runs the same? Every file of run A against run B, times and each run's own folder aside.

  python tools/compare_runs.py runs/demo_a runs/demo_b

What is compared:
  *.json, *.jsonl    field by field, after dropping times (keys such as `seconds`, `*_s`, `rtf`,
                     `mfu`, `date`), what the run had to compile (its caches' doing) and
                     writing each run's own folder as <run>;
  weight folders     (config.json + params/: converted and exported checkpoints) tensor by
                     tensor: name, dtype, shape and every byte;
  checkpoints/       a training run's checkpoint steps (their weights are what its export holds);
  everything else    byte for byte (audio, transcripts, tokenizers, encoder caches: a cache's
                     folder named by a hash of the run's own paths is matched to the other's).
Not compared: logs, TensorBoard events, plots, compilation caches and orbax's own files (they hold
write times and hashes of them).

Exit status 0 when the runs are the same, 1 listing the differences (the first 50), 2 when a
folder is missing. docs/training.md says what is bit-identical between two runs and what is not.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIME_KEYS = {"seconds", "rtf", "mfu", "date", "machine", "tokens_per_s", "step_s", "val_s",
             "data_wait_s", "tflops_per_device", "compile_s", "seconds_per_step", "wall_s"}
# What this process had to compile: it depends on the compilation caches, not on the results.
CACHE_KEYS = {"compiled_shapes"}
SKIPPED_DIRS = {"jax_cache", "logs", "tb", "xla"}
HASHED_DIRS = {"encoder_cache"}
SKIPPED_SUFFIXES = {".log", ".png", ".pdf", ".svg"}


def is_time(key: str) -> bool:
  return (key in TIME_KEYS or key in CACHE_KEYS or key.endswith("_seconds")
          or key.endswith("_ms"))


def normalized(value, run: str):
  """`value` with times dropped and `run` (the run's folder) written as <run>."""
  if isinstance(value, dict):
    return {k: normalized(v, run) for k, v in value.items() if not is_time(k)}
  if isinstance(value, list):
    return [normalized(v, run) for v in value]
  if isinstance(value, str):
    return value.replace(run, "<run>")
  if isinstance(value, float) and math.isnan(value):
    return "nan"  # NaN != NaN: the same NaN in both runs is the same value
  return value


def read_json(path: Path, run: str):
  text = path.read_text()
  if path.suffix == ".jsonl":
    return [normalized(json.loads(line), run) for line in text.splitlines() if line.strip()]
  return normalized(json.loads(text), run)


def first_difference(a, b, where: str = "") -> str | None:
  if type(a) is not type(b):
    return f"{where or 'value'}: {a!r} vs {b!r}"
  if isinstance(a, dict):
    for k in sorted(set(a) | set(b)):
      if k not in a or k not in b:
        return f"{where}.{k}: only in {'B' if k not in a else 'A'}"
      if (d := first_difference(a[k], b[k], f"{where}.{k}")) is not None:
        return d
    return None
  if isinstance(a, list):
    if len(a) != len(b):
      return f"{where or 'list'}: {len(a)} vs {len(b)} entries"
    for i, (x, y) in enumerate(zip(a, b)):
      if (d := first_difference(x, y, f"{where}[{i}]")) is not None:
        return d
    return None
  return None if a == b else f"{where or 'value'}: {a!r} vs {b!r}"


def is_weights(folder: Path) -> bool:
  return (folder / "config.json").is_file() and (folder / "params").is_dir()


def tensors(folder: Path) -> dict[str, tuple]:
  import numpy as np

  from llada_jax.models import checkpoint

  out = {}
  for name, value in checkpoint.iter_params(folder):
    a = np.asarray(value)
    out[name] = (str(a.dtype), a.shape, a.tobytes())
  return out


def files(run: Path) -> tuple[set[Path], set[Path], set[Path]]:
  """(plain files, weight folders, checkpoints/ folders), relative to `run`."""
  plain, weights, checkpoints = set(), set(), set()
  stack = [run]
  while stack:
    folder = stack.pop()
    if is_weights(folder):
      weights.add(folder.relative_to(run))
    for p in folder.iterdir():
      if p.is_dir():
        if p.name in SKIPPED_DIRS or (p.name == "params" and is_weights(folder)):
          continue
        if p.name == "checkpoints":
          checkpoints.add(p.relative_to(run))
          continue
        stack.append(p)
      elif p.suffix not in SKIPPED_SUFFIXES and not p.name.startswith("events.out.tfevents"):
        plain.add(p.relative_to(run))
  return plain, weights, checkpoints


def one_key(folder: Path) -> Path | None:
  """The key of a HASHED_DIRS folder holding one, or several with the same files and bytes (a run
  resumed from, or moved to, another path fills the same cache again under that path's key);
  None when its keys differ."""
  keys = sorted(folder.iterdir())
  names = lambda key: sorted(str(p.relative_to(key)) for p in key.rglob("*") if p.is_file())
  first = names(keys[0])
  for key in keys[1:]:
    if names(key) != first:
      return None
    _, mismatch, errors = filecmp.cmpfiles(keys[0], key, first, shallow=False)
    if mismatch or errors:
      return None
  return keys[0]


def unhashed(run: Path, plain: set[Path]) -> dict[Path, Path]:
  """{name to compare by: file}: a folder that HASHED_DIRS names holds one folder per key, and
  the key hashes, among others, paths inside the run (the encoder cache's the converted Whisper's
  folder), so two runs' keys differ; with one key each (or keys of equal content), its files are
  compared as <key>/…"""
  keys = {}  # hashed folder → its one key (or None)
  out = {}
  for rel in plain:
    name = rel
    for i, part in enumerate(rel.parts[:-2]):
      folder = Path(*rel.parts[:i + 1])
      if part in HASHED_DIRS:
        if folder not in keys:
          key = one_key(run / folder)
          keys[folder] = key and key.relative_to(run)
        if keys[folder] is not None:
          if Path(*rel.parts[:i + 2]) != keys[folder]:
            name = None  # the same content as the key compared
          else:
            name = Path(folder, "<key>", *rel.parts[i + 2:])
          break
    if name is not None:
      out[name] = rel
  return out


def compare(a: Path, b: Path) -> tuple[list[str], int]:
  """(differences, number of things compared)."""
  (pa, wa, ca), (pb, wb, cb) = files(a), files(b)
  names_a, names_b = unhashed(a, pa), unhashed(b, pb)
  pa, pb = set(names_a), set(names_b)
  diffs = [f"{p}: only in {'A' if p in x else 'B'}"
           for x, y in ((pa, pb), (wa, wb), (ca, cb)) for p in sorted(x ^ y)]
  for rel in sorted(pa & pb):
    fa, fb = a / names_a[rel], b / names_b[rel]
    if rel.suffix in (".json", ".jsonl"):
      d = first_difference(read_json(fa, str(a)), read_json(fb, str(b)))
      if d is not None:
        diffs.append(f"{rel}: {d}")
    elif fa.read_bytes() != fb.read_bytes():
      diffs.append(f"{rel}: the bytes differ")
  for rel in sorted(wa & wb):
    ta, tb = tensors(a / rel), tensors(b / rel)
    changed = sorted(n for n in set(ta) | set(tb) if ta.get(n) != tb.get(n))
    if changed:
      diffs.append(f"{rel}: {len(changed)} of {len(ta)} tensors differ, e.g. {changed[:3]}")
  for rel in sorted(ca & cb):
    sa, sb = (sorted(p.name for p in (r / rel).iterdir() if p.name.isdigit()) for r in (a, b))
    if sa != sb:
      diffs.append(f"{rel}: steps {sa} vs {sb}")
  return diffs, len(pa & pb) + len(wa & wb) + len(ca & cb)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 2)[2])
  p.add_argument("a", type=Path)
  p.add_argument("b", type=Path)
  args = p.parse_args(argv)
  for run in (args.a, args.b):
    if not run.is_dir():
      print(f"compare_runs: {run}: no such folder", file=sys.stderr)
      return 2
  diffs, n = compare(args.a.resolve(), args.b.resolve())
  for d in diffs[:50]:
    print(d)
  print(f"{n} files and folders compared: "
        + ("the same" if not diffs else f"{len(diffs)} difference(s)"))
  return 1 if diffs else 0


if __name__ == "__main__":
  sys.exit(main())
