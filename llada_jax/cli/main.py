"""The `llada-jax` command (installed by pyproject.toml's [project.scripts]; also
`python -m llada_jax`): one subcommand per module of COMMANDS, each with `HELP`,
`add_arguments(parser)` and `run(args) -> exit status`; a `UsageError` it raises exits 2.

    llada-jax transcribe AUDIO... --checkpoint CKPT [--deliberate CKPT2 …] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import typing as tp

COMMANDS = {"transcribe": "llada_jax.cli.transcribe"}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="llada-jax", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, module_name in COMMANDS.items():
    module = importlib.import_module(module_name)
    sp = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sp)
    sp.set_defaults(_module=module, _parser=sp)
  return p


def _log_to_stderr() -> None:
  # Our own handler: absl (imported by tfds/orbax) may already own the root logger, which would
  # swallow the compile notices (whisper-jax's users took silent compiles for slowness).
  ours = logging.getLogger("llada_jax")
  if not any(getattr(h, "_llada_cli", False) for h in ours.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._llada_cli = True
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def main(argv: tp.Sequence[str] | None = None) -> int:
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a bad argument (2, argparse's message printed)
    return int(e.code or 0)
  _log_to_stderr()
  try:
    return args._module.run(args)
  except args._module.UsageError as e:
    print(f"{args._parser.prog}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
