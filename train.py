#!/usr/bin/env python3
"""Train Whisper-LLaDA or the Whisper-LLaMA baseline: `llada-jax train` (its --help tells how)."""

import sys

from llada_jax.cli.train import main

if __name__ == "__main__":
  sys.exit(main())
