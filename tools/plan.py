#!/usr/bin/env python3
"""Will the paper-scale train step fit? `llada-jax plan` (its --help tells how)."""

import sys

from llada_jax.cli.plan import main

if __name__ == "__main__":
  sys.exit(main())
