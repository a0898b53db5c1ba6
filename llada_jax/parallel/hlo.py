"""Collectives in a compiled XLA program: which, how many, how many bytes.

    compiled = jax.jit(step).lower(*args).compile()
    summary(collectives(compiled.as_text()))  # {"all-gather": {"count": 3, ...}, ...}

Counts are of instructions in the program text: a collective inside a loop body (a scan over
micro-batches) is counted once, not once per iteration. Bytes are shapes × element size; an
instruction whose result is a tuple (XLA combines small collectives) counts every element.
Compiled HLO names its operands without their shapes, so operand bytes come from the instructions
that define them.
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
         "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64,
         "c128": 128}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[([0-9,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPERAND = re.compile(r"%([\w.\-]+)")

Array = tuple[str, tuple[int, ...]]


def _element_bits(dtype: str) -> int:
  if dtype in _BITS:
    return _BITS[dtype]
  if dtype.startswith("f8"):
    return 8
  return 0  # token[], opaque: no payload


def array_bytes(arrays: tuple[Array, ...]) -> int:
  total = 0
  for dtype, dims in arrays:
    n = 1
    for d in dims:
      n *= d
    total += n * _element_bits(dtype) // 8
  return total


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str  # one of KINDS
  name: str  # the instruction's name in the HLO text
  result: tuple[Array, ...]  # (dtype, dims) of each result array
  operand_bytes: int

  @property
  def result_bytes(self) -> int:
    return array_bytes(self.result)


@dataclasses.dataclass(frozen=True)
class _Instr:
  shape: tuple[Array, ...]
  op: str
  operands: tuple[str, ...]


def _split_shape(rest: str) -> tuple[str, str]:
  """`rest` = "SHAPE op(...)..." → (SHAPE, "op(...)..."); SHAPE may be a (nested) tuple."""
  if not rest.startswith("("):
    shape, _, tail = rest.partition(" ")
    return shape, tail
  depth = 0
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[:i + 1], rest[i + 1:].lstrip()
  return rest, ""


def _parse(text: str) -> dict[str, _Instr]:
  out = {}
  for line in text.splitlines():
    m = _DEF.match(line)
    if m is None:
      continue
    shape, tail = _split_shape(line[m.end():])
    op, paren, args = tail.partition("(")
    if not paren or not re.fullmatch(r"[a-z][\w\-]*", op):
      continue
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        end = i
        break
    arrays = tuple((d, tuple(int(x) for x in dims.split(",") if x))
                   for d, dims in _ARRAY.findall(re.sub(r"\{[^}]*\}", "", shape)))
    out[m.group(1)] = _Instr(arrays, op, tuple(_OPERAND.findall(args[:end])))
  return out


def collectives(text: str) -> list[Collective]:
  """Every collective of an HLO module's text (`compiled.as_text()`), in program order. An async
  pair (`all-gather-start` / `-done`) is one collective with the `-done`'s result."""
  instrs = _parse(text)

  def operand_bytes(names):
    return sum(array_bytes(instrs[n].shape) for n in names if n in instrs)

  found = []
  for name, ins in instrs.items():
    kind = ins.op.removesuffix("-done")
    if kind not in KINDS:
      continue
    operands = ins.operands
    if ins.op.endswith("-done"):  # operands are those of the matching -start
      start = instrs.get(operands[0]) if operands else None
      operands = start.operands if start is not None else ()
    found.append(Collective(kind, name, ins.shape, operand_bytes(operands)))
  return found


def summary(found: list[Collective]) -> dict[str, dict[str, int]]:
  """{kind: {"count", "result_bytes", "operand_bytes"}} for every kind in KINDS (zeros if none)."""
  out = {k: {"count": 0, "result_bytes": 0, "operand_bytes": 0} for k in KINDS}
  for c in found:
    row = out[c.kind]
    row["count"] += 1
    row["result_bytes"] += c.result_bytes
    row["operand_bytes"] += c.operand_bytes
  return out
