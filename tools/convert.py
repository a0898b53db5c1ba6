"""Convert checkpoints to llada-jax and back: the command line of `llada_jax.cli.convert`.

  python tools/convert.py --help
"""

from __future__ import annotations

import sys

from llada_jax.cli.convert import main

if __name__ == "__main__":
  sys.exit(main())
