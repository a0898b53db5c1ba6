"""Convert checkpoints to llada-jax and back: `llada-jax convert` (its --help tells how)."""

from __future__ import annotations

import sys

from llada_jax.cli.convert import main

if __name__ == "__main__":
  sys.exit(main())
