"""The `llada-jax` command: Whisper-LLaDA speech recognition and deliberation in JAX.

  llada-jax convert     --kind whisper --src whisper-large-v3/ --out ckpt/whisper-large-v3
  llada-jax train       --config paper --workdir runs/paper --set data.train=LibriSpeech/train-960
  llada-jax eval        --checkpoint runs/paper/model --data LibriSpeech/test-other --out runs/d \\
                        --strategy semi_ar
  llada-jax transcribe  talk.m4a --checkpoint ckpt/whisper-large-v3 --deliberate runs/paper/model
  llada-jax serve       --model whisper=ckpt/whisper-large-v3 --model llada=runs/paper/model \
                        --cascade deliberated=whisper,llada --port 8000
  llada-jax plan        --config paper --meshes 1,8,1 1,4,2

`llada-jax COMMAND --help` tells more about each. Docs: README.md and docs/ of the source tree.
"""

from __future__ import annotations

import argparse
import sys
import typing as tp

from llada_jax.cli import convert, options, plan, serve, train, transcribe
from llada_jax.cli import eval as evaluate

COMMANDS = (convert, train, evaluate, transcribe, serve, plan)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="llada-jax", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
  for module in COMMANDS:
    options.command(module, sub.add_parser(module.NAME, help=module.HELP))
  return p


def main(argv: tp.Sequence[str] | None = None) -> int:
  return options.execute(build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
