"""The one config module: typed dataclasses ⇄ JSON, `--set key=value` overrides, and loading a
config by name (`configs/NAME.py`), from a `.py` file or from a `.json` file.

    cfg = config_files.load("tiny", TrainConfig, ["data.train=corpus/train-clean", "mesh=2,2,2"])

Model configs, train configs and the demo's config all go through here. Every value is checked
against its field's annotation, and every error is a `ConfigError` naming the field (and the file).
A run is a Python file in the top-level `configs/` folder defining `config()`; names resolve there
(or in `$LLADA_CONFIG_DIR`; an installed wheel carries the folder as `llada_jax/configs`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import types
import typing as tp
from pathlib import Path

T = tp.TypeVar("T")


def _config_dir() -> Path:
  # A source checkout keeps the runs beside the package; a wheel carries them inside it.
  here = Path(__file__).resolve().parent
  checkout = here.parent / "configs"
  return checkout if (checkout / "tiny.py").is_file() else here / "configs"


CONFIG_DIR = Path(os.environ.get("LLADA_CONFIG_DIR") or _config_dir())


class ConfigError(ValueError):
  """A config field is unknown, has the wrong type or an impossible value."""


# -- dataclass → JSON -----------------------------------------------------------------------------

def to_dict(cfg, *, kind: str | None = None) -> dict:
  """A config as plain JSON values (tuples as lists); `kind` tags it at the top level."""
  out = {"kind": kind} if kind is not None else {}
  for f in dataclasses.fields(cfg):
    out[f.name] = _plain(getattr(cfg, f.name))
  return out


def _plain(value):
  if dataclasses.is_dataclass(value):
    return to_dict(value)
  if isinstance(value, tuple):
    return [_plain(v) for v in value]
  return value


def save_json(cfg, path: str | os.PathLike, *, kind: str | None = None) -> None:
  Path(path).write_text(json.dumps(to_dict(cfg, kind=kind), indent=2))


# -- JSON → dataclass -----------------------------------------------------------------------------

def from_dict(cls: type[T] | tp.Mapping[str, type], data: tp.Mapping, where: str = "config") -> T:
  """Build `cls` from `data` (a `to_dict` dump; missing fields take their defaults).

  `cls` may be a {kind: class} table: then `data["kind"]` picks the class. A "kind" key is
  accepted (and ignored) anywhere else, so tagged dumps read back.
  """
  if not isinstance(data, tp.Mapping):
    raise ConfigError(f"{where}: expected a JSON object of fields, got {type(data).__name__}")
  data = dict(data)
  kind = data.pop("kind", None)
  if isinstance(cls, tp.Mapping):
    if not isinstance(kind, str) or kind not in cls:
      raise ConfigError(f"{where}: 'kind' must be one of {sorted(cls)}, got {kind!r}")
    cls = cls[kind]
  hints = tp.get_type_hints(cls)
  unknown = sorted(set(data) - set(hints))
  if unknown:
    raise ConfigError(f"{where + ': ' if where else ''}unknown field(s) {unknown} for "
                      f"{cls.__name__} (fields: {', '.join(hints)})")
  kw = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:  # ConfigError from __post_init__ included
    raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _type_name(annotation) -> str:
  return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value, annotation, key: str):
  """`value` (a JSON value, or a raw `--set` string) as `annotation`, else a ConfigError naming
  `key`. Strings are parsed as JSON for non-string fields; `none`/`null` is None where allowed;
  `1,2,3` is a tuple."""
  origin, args = tp.get_origin(annotation), tp.get_args(annotation)
  raw = value
  if origin in (tp.Union, types.UnionType):
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
      if type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    for i, one in enumerate(inner):  # the first member type the value fits, in declared order
      try:
        return coerce(value, one, key)
      except ConfigError:
        if i == len(inner) - 1:
          raise
  if annotation is str:
    if isinstance(value, str):
      return value
    raise ConfigError(f"{key}={raw!r}: expected a string")
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except (ValueError, RecursionError):
      # ValueError: bad JSON, or an int of over 4300 digits; RecursionError: deep nesting
      if origin is not tuple:
        raise ConfigError(f"{key}={raw!r}: expected {_type_name(annotation)}") from None
      value = [v.strip() for v in value.strip("()[]").split(",") if v.strip()]
  if annotation is bool:
    if isinstance(value, bool):
      return value
  elif annotation is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif annotation is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif origin is tuple:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
      value = [value]
    if isinstance(value, (list, tuple)):
      elem = args[0] if args else str
      return tuple(coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
  elif dataclasses.is_dataclass(annotation):
    if isinstance(value, dict):
      return from_dict(annotation, value, key)
    if isinstance(value, annotation):
      return value
  raise ConfigError(f"{key}={raw!r}: expected {_type_name(annotation)}")


# -- overrides ------------------------------------------------------------------------------------
# Overrides edit the config's dict form and the config is built once at the end, so fields that
# must change together (`model.lm.causal=true objective=ar`) can be set in any order.

def override(cfg: T, items: tp.Sequence[str]) -> T:
  """Apply `key=value` strings (dotted keys: `optimizer.peak_lr=1e-4`, `mesh=2,2,2`)."""
  data = to_dict(cfg)
  for item in items:
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
      raise ConfigError(f"override {item!r}: expected key=value")
    _set(data, type(cfg), key.strip(), value)
  return from_dict(type(cfg), data, "")


def merge(cfg: T, overrides: tp.Mapping) -> T:
  """Apply a nested dict of overrides (groups merge, leaves replace)."""
  data = to_dict(cfg)

  def walk(group: dict, changes: tp.Mapping, cls: type, prefix: str) -> None:
    for name, value in changes.items():
      if name == "kind":
        continue
      if isinstance(value, dict) and isinstance(group.get(name), dict):
        walk(group[name], value, _group_type(cls, name, prefix), f"{prefix}{name}.")
      else:
        _set(group, cls, name, value, prefix=prefix)

  walk(data, overrides, type(cfg), "")
  return from_dict(type(cfg), data, "")


def _group_type(cls: type, name: str, prefix: str) -> type:
  annotation = tp.get_type_hints(cls)[name]
  inner = [a for a in tp.get_args(annotation) if a is not type(None)] or [annotation]
  if len(inner) != 1 or not dataclasses.is_dataclass(inner[0]):
    raise ConfigError(f"{prefix}{name}: not a group of fields")
  return inner[0]


def _set(data: dict, cls: type, key: str, value, *, prefix: str = "") -> None:
  """Set the dotted `key` of `data` (the dict form of a `cls`), coercing `value` to its type."""
  head, _, rest = key.partition(".")
  full = f"{prefix}{head}"
  hints = tp.get_type_hints(cls)
  if head not in hints:
    raise ConfigError(f"unknown config key {prefix + key!r}: {cls.__name__} has no field "
                      f"{head!r} (fields: {', '.join(hints)})")
  if not rest:
    data[head] = _plain(coerce(value, hints[head], full))
    return
  if data[head] is None:
    raise ConfigError(f"{prefix + key!r}: {full} is None; set {full} itself first")
  if not isinstance(data[head], dict):
    raise ConfigError(f"unknown config key {prefix + key!r}: {full} is a "
                      f"{type(data[head]).__name__}, not a group")
  _set(data[head], _group_type(cls, head, prefix), rest, value, prefix=full + ".")


# -- loading --------------------------------------------------------------------------------------

def names(config_dir: Path | None = None) -> list[str]:
  """The run configs `load` resolves by name."""
  folder = config_dir or CONFIG_DIR
  return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def resolve(spec: str | os.PathLike) -> Path:
  """A config name (`paper` → configs/paper.py) or a .py / .json path."""
  path = Path(spec)
  if path.suffix in (".py", ".json"):
    if not os.path.isfile(path):  # not Path.is_file: a name too long for it is an OSError
      raise ConfigError(f"config {spec}: no such file")
    return path
  if path.name == str(spec) and os.path.isfile(CONFIG_DIR / f"{spec}.py"):
    return CONFIG_DIR / f"{spec}.py"
  raise ConfigError(f"config {spec!r}: not a config name ({', '.join(names())} in "
                    f"{CONFIG_DIR}) nor a .py / .json file")


def load(spec: str | os.PathLike, cls: type[T], overrides: tp.Sequence[str] = ()) -> T:
  """The `cls` config named by `spec` (see `resolve`), then `overrides`.

  A .py file defines `config()` returning a `cls`. A .json file is a `to_dict` dump or
  `{"base": NAME_OR_FILE, ...nested overrides...}`. Errors name the file.
  """
  return _load(resolve(spec), cls, overrides, ())


def _load(path: Path, cls: type[T], overrides: tp.Sequence[str], chain: tuple[Path, ...]) -> T:
  """`load` of a resolved file; `chain` the files whose "base" led here (a cycle is an error)."""
  try:
    if path.suffix == ".json":
      try:
        data = json.loads(path.read_text(encoding="utf-8"))
      except (ValueError, RecursionError) as e:
        # ValueError: bad JSON or UTF-8, or an int of over 4300 digits; RecursionError: deep nesting
        raise ConfigError(f"not valid JSON: {e}") from None
      if not isinstance(data, dict):
        raise ConfigError("expected a JSON object")
      base = data.pop("base", None)
      if base is not None and not isinstance(base, str):
        raise ConfigError(f"base={base!r}: expected a config name or file")
      if base is not None:
        parent = resolve(base)
        if parent.resolve() in {p.resolve() for p in (*chain, path)}:
          raise ConfigError(f"base={base!r}: a cycle of base configs "
                            f"({' -> '.join(str(p) for p in (*chain, path, parent))})")
        cfg = merge(_load(parent, cls, (), (*chain, path)), data)
      else:
        cfg = from_dict(cls, data, "")
    else:
      made = runpy.run_path(str(path)).get("config")
      if not callable(made):
        raise ConfigError(f"must define config() returning a {cls.__name__}")
      try:
        cfg = made()
      except TypeError as e:  # a typo'd field name: TrainConfig(stpes=…)
        raise ConfigError(str(e)) from None
      if not isinstance(cfg, cls):
        raise ConfigError(f"config() returned a {type(cfg).__name__}, not a {cls.__name__}")
    return override(cfg, overrides)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None
