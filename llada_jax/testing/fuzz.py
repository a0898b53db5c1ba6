"""Fuzzing the parsers of user input with hypothesis: the contract, mutations of valid seeds, and a
time-bounded runner (`tools/fuzz.py` runs it; `tests/test_fuzz.py` runs each target briefly).

The contract: every input ends in a result or the parser's named error (AudioError, ConfigError,
ConversionError, …) whose message names the input; any other exception, a call past the time
bound, or a MemoryError (the runner caps the address space) is a failure. Inputs start from valid
seeds that each target builds in-process, mutated by byte operations (truncation, flips, forged
length/count fields, inserted and deleted runs) or, for JSON, by structure (a node replaced by a
hostile value, deleted, deeply nested), since random bytes never get past a magic number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import time
import traceback
import typing as tp
from pathlib import Path

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException


@dataclasses.dataclass(frozen=True)
class Case:
  """One input: files written under the work folder (relative name → bytes) and arguments."""

  files: tuple[tuple[str, bytes], ...]
  args: tuple[str, ...] = ()


@dataclasses.dataclass
class Target:
  """A parser under test. `setup(work)` builds the seeds and returns the strategy of Cases;
  `parse(work, case)` runs the parser on the written case; `names(work, case)` are the strings of
  which its error message must hold one (the file, or an argument's key)."""

  name: str
  doc: str
  setup: tp.Callable[[Path], st.SearchStrategy[Case]]
  parse: tp.Callable[[Path, Case], tp.Any]
  errors: tuple[type[BaseException], ...]
  names: tp.Callable[[Path, Case], list[str]]
  time_limit: float = 2.0  # seconds per input


class Timeout(BaseException):
  """An input ran past its bound (a BaseException: parsers' `except Exception` must not eat it)."""


@dataclasses.dataclass
class Failure:
  key: str  # what makes failures distinct: kind, exception type, where it was raised
  message: str  # first line
  detail: str  # the traceback
  case: Case | None = None
  hits: int = 0


class _Found(Exception):
  def __init__(self, key: str):
    super().__init__(key)
    self.key = key


# -- the contract ---------------------------------------------------------------------------------

def write_case(work: Path, case: Case) -> None:
  for name, data in case.files:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _where(tb) -> str:
  frames = traceback.extract_tb(tb)
  if not frames:
    return "?"
  ours = [f for f in frames if "llada_jax" in f.filename and "testing" not in f.filename]
  f = (ours or frames)[-1]
  return f"{Path(f.filename).name}:{f.lineno}"


def _timeout(signum, frame):
  raise Timeout()


def run_case(target: Target, work: Path, case: Case) -> Failure | None:
  """Write `case`, parse it under the time bound, and judge the outcome by the contract."""
  write_case(work, case)
  old = signal.signal(signal.SIGALRM, _timeout)
  signal.setitimer(signal.ITIMER_REAL, target.time_limit)
  start = time.monotonic()
  try:
    target.parse(work, case)
  except target.errors as e:
    names = target.names(work, case)
    text = str(e)
    if not any(n and n in text for n in names):
      return Failure(f"unnamed {type(e).__name__} at {_where(e.__traceback__)}",
                     f"message names none of {names[:3]}: {text.splitlines()[0] if text else ''}",
                     traceback.format_exc())
  except Timeout:
    return Failure("timeout", f"no result within {target.time_limit} s", traceback.format_exc())
  except (Exception, RecursionError, MemoryError) as e:  # noqa: B014 - named for the reader
    first = str(e).splitlines()[0] if str(e) else ""
    return Failure(f"{type(e).__name__} at {_where(e.__traceback__)}", first[:300],
                   traceback.format_exc())
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
  elapsed = time.monotonic() - start
  if elapsed > target.time_limit:  # a C call that the alarm could not interrupt
    return Failure("timeout", f"returned after {elapsed:.1f} s (bound {target.time_limit} s)", "")
  return None


# -- mutations ------------------------------------------------------------------------------------

# Lengths and counts a forger would write: zero, one, sign and width boundaries, the maxima.
INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF,
                    0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 40) - 1,
                    (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
_ints = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, (1 << 64) - 1))
_pos = st.integers(0, 1 << 20)

# (offset, width, byteorder) of the numeric fields a seed writer knows: forging them is likelier
# to reach the code behind a length check than a random offset.
Field = tuple[int, int, str]


def byte_ops(fields: tp.Sequence[Field] = ()) -> st.SearchStrategy[list]:
  ops = [
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("byte"), _pos, st.integers(0, 255)),
    st.tuples(st.just("int"), _pos, st.sampled_from((1, 2, 4, 8)), _ints,
              st.sampled_from(("little", "big"))),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 64)),
    st.tuples(st.just("repeat"), _pos, st.integers(1, 64), st.integers(2, 64)),
  ]
  if fields:
    ops.append(st.tuples(st.just("field"), st.sampled_from(list(fields)), _ints))
  return st.lists(st.one_of(ops), max_size=4)


def apply_byte_ops(data: bytes, ops: list) -> bytes:
  out = bytearray(data)
  for op in ops:
    at = op[1] % (len(out) + 1) if op[0] != "field" else 0
    if op[0] == "truncate":
      del out[at:]
    elif op[0] == "byte" and out:
      out[at % len(out)] = op[2]
    elif op[0] == "int":
      width, order = op[2], op[4]
      out[at:at + width] = (op[3] & ((1 << 8 * width) - 1)).to_bytes(width, order)
    elif op[0] == "field":
      (offset, width, order), value = op[1], op[2]
      if offset + width <= len(out):
        out[offset:offset + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, order)
    elif op[0] == "insert":
      out[at:at] = op[2]
    elif op[0] == "delete":
      del out[at:at + op[2]]
    elif op[0] == "repeat":
      out[at:at] = bytes(out[at:at + op[2]]) * (op[3] - 1)
  return bytes(out)


def mutated_bytes(seed: bytes, fields: tp.Sequence[Field] = ()) -> st.SearchStrategy[bytes]:
  return byte_ops(fields).map(lambda ops: apply_byte_ops(seed, ops))


def json_values(strings: tp.Sequence[str] = ()) -> st.SearchStrategy:
  """Hostile JSON values: huge and negative ints, NaN and infinities, unicode, wrong shapes."""
  leaves = st.one_of(
    st.none(), st.booleans(), _ints, st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", " ", "none", "null", "1,2,3", "\x00", "é€𝄞",
                                           "..", "/", "-1", "1e999", *strings]))
  return st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _nodes(value, path=()) -> list[tuple]:
  out = [path]
  if isinstance(value, dict):
    for k, v in value.items():
      out += _nodes(v, path + (k,))
  elif isinstance(value, list):
    for i, v in enumerate(value):
      out += _nodes(v, path + (i,))
  return out


def _get(value, path):
  for p in path:
    value = value[p]
  return value


def apply_json_ops(seed, ops: list) -> tuple[tp.Any, list]:
  """`seed` (a JSON value, not changed) with each op applied to the node it picks by index; a
  deeply nested node is a placeholder string here (`dump_json` writes the nesting), so that the
  next op does not recurse through it."""
  value, nests = json.loads(json.dumps(seed)), []
  for op in ops:
    nodes = _nodes(value)
    path = nodes[op[1] % len(nodes)]
    if op[0] == "nest":  # deep nesting: recursion limits of the readers
      nests.append((op[2], _get(value, path)))
      op = ("replace", op[1], f"@@nest{len(nests) - 1}@@")
    if op[0] == "replace":
      if not path:
        value = op[2]
      else:
        _get(value, path[:-1])[path[-1]] = op[2]
    elif op[0] == "delete" and path:
      del _get(value, path[:-1])[path[-1]]
    elif op[0] == "add":
      node = _get(value, path)
      if isinstance(node, dict):
        node[op[2]] = op[3]
      elif isinstance(node, list):
        node.append(op[3])
  return value, nests


def json_ops(strings: tp.Sequence[str] = (), keys: tp.Sequence[str] = ()) -> st.SearchStrategy:
  values = json_values(strings)
  names = st.one_of(st.text(max_size=8), st.sampled_from(list(keys) or [""]))
  return st.lists(st.one_of(
    st.tuples(st.just("replace"), _pos, values),
    st.tuples(st.just("delete"), _pos),
    st.tuples(st.just("add"), _pos, names, values),
    st.tuples(st.just("nest"), _pos, st.sampled_from((2, 64, 5000, 100_000))),
  ), max_size=3)


def dump_json(value, nests: tp.Sequence[tuple[int, tp.Any]] = ()) -> bytes:
  text = json.dumps(value, allow_nan=True)
  for i, (depth, inner) in reversed(list(enumerate(nests))):  # a later nest may hold an earlier
    text = text.replace(f'"@@nest{i}@@"', "[" * depth + json.dumps(inner, allow_nan=True)
                        + "]" * depth)
  return text.encode("utf-8", "surrogatepass")


def mutated_json(seed, strings: tp.Sequence[str] = (), keys: tp.Sequence[str] = ()
                 ) -> st.SearchStrategy[bytes]:
  """`seed` serialised after structural ops, then (sometimes) byte ops on the text."""
  return st.tuples(json_ops(strings, keys), byte_ops()).map(
    lambda ops: apply_byte_ops(dump_json(*apply_json_ops(seed, ops[0])), ops[1]))


def maybe(strategy: st.SearchStrategy[bytes], seed: bytes) -> st.SearchStrategy[bytes]:
  """The seed unchanged (shrinks to it) or mutated: for the files of a case not under attack."""
  return st.one_of(st.just(seed), strategy)


# -- the runner -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
  target: str
  seconds: float = 0.0
  tried: int = 0
  failures: dict[str, Failure] = dataclasses.field(default_factory=dict)


def fuzz(target: Target, work: Path, seconds: float, *, chunk: int = 200,
         derandomize: bool = False, max_examples: int | None = None,
         on_case: tp.Callable[[Case], None] | None = None) -> Report:
  """Run `target` for `seconds` (or `max_examples` inputs): hypothesis runs of `chunk` inputs,
  each new kind of failure shrunk to a minimal input; repeats only counted."""
  work.mkdir(parents=True, exist_ok=True)
  strategy = target.setup(work / "seeds")
  cases = work / "case"
  # The simplest input of every target's strategy is its valid seed, unmutated: parsing it first,
  # unbounded, warms the imports and caches up, and checks the harness (a seed must parse).
  seed = find(strategy, lambda _: True, settings=settings(database=None,
                                                          suppress_health_check=list(HealthCheck)))
  shutil.rmtree(cases, ignore_errors=True)
  cases.mkdir()
  write_case(cases, seed)
  target.parse(cases, seed)
  report = Report(target.name)
  shrunk: set[str] = set()
  start = time.monotonic()
  end = start + seconds

  def one(case: Case) -> None:
    report.tried += 1
    if on_case is not None:
      on_case(case)
    shutil.rmtree(cases, ignore_errors=True)
    cases.mkdir()
    failure = run_case(target, cases, case)
    if failure is None:
      return
    seen = report.failures.setdefault(failure.key, failure)
    seen.hits += 1
    if failure.key in shrunk:
      return  # known and minimised: only counted
    # the last one kept: after shrinking, hypothesis replays the minimal input last
    seen.case, seen.message, seen.detail = case, failure.message, failure.detail
    raise _Found(failure.key)

  budget = max_examples
  while time.monotonic() < end and (budget is None or budget > 0):
    n = chunk if budget is None else min(chunk, budget)
    run = settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
                   suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                   phases=[Phase.explicit, Phase.generate, Phase.shrink],
                   print_blob=False)(given(strategy)(one))
    try:
      run()
    except _Found as e:
      shrunk.add(e.key)
    except HypothesisException:  # a flaky input (e.g. a timeout near the bound): recorded
      shrunk.update(report.failures)  # unshrunk; from now on only counted
    if budget is not None:
      budget -= n
    if derandomize and not report.failures:
      break  # the same inputs again would find nothing new
  report.seconds = time.monotonic() - start
  return report


def save_failures(report: Report, out: Path) -> list[Path]:
  """Each failure's minimal input under out/TARGET/NN/ (files, args.json, error.txt)."""
  saved = []
  for i, f in enumerate(report.failures.values()):
    folder = out / report.target / f"{i:02d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if f.case is not None:
      write_case(folder / "input", f.case)
      (folder / "args.json").write_text(json.dumps(list(f.case.args)))
    (folder / "error.txt").write_text(f"{f.key}\n{f.message}\nhits: {f.hits}\n\n{f.detail}")
    saved.append(folder)
  return saved


def summary(report: Report) -> dict:
  rate = report.tried / report.seconds if report.seconds else math.nan
  return {"target": report.target, "seconds": round(report.seconds, 1), "inputs": report.tried,
          "per_second": round(rate, 1),
          "failures": [{"key": f.key, "message": f.message, "hits": f.hits}
                       for f in report.failures.values()]}
