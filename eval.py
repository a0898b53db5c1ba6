#!/usr/bin/env python3
"""Transcribe a data set and score it: `llada-jax eval` (its --help and docs/evaluate.md)."""

import sys

from llada_jax.cli.eval import main

if __name__ == "__main__":
  sys.exit(main())
