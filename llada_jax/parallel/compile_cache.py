"""JAX's persistent compilation cache, on by default for train.py, eval.py and `llada-jax
transcribe`: a second run of the same shapes loads its executables instead of compiling them.

Where: $JAX_COMPILATION_CACHE_DIR if the user set it (left as is), else $LLADA_JAX_CACHE_DIR, else
~/.cache/llada_jax/xla. `LLADA_JAX_CACHE_DIR=off` (or `--no-compile-cache`) turns it off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "LLADA_JAX_CACHE_DIR"
OFF = ("", "0", "off", "none", "false")
# Compiles shorter than this are not written: a CPU test model's steps take ~1 s, an 8B step
# minutes; the XLA default (1 s) would skip many of the small jitted helpers worth keeping.
MIN_COMPILE_SECS = 0.2


def default_dir() -> Path:
  return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llada_jax" / "xla"


def enable(disable: bool = False) -> str | None:
  """Turn the cache on (call after `jax.distributed.initialize`, before compiling); returns its
  folder, or None when it stays off."""
  import jax

  if disable:
    return None
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    folder = jax.config.jax_compilation_cache_dir  # the user's (JAX reads its own variable)
    log.info("compilation cache: %s", folder)
    return folder
  setting = os.environ.get(ENV)
  if setting is not None and setting.strip().lower() in OFF:
    return None
  folder = setting or str(default_dir())
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # On CPU a multi-process executable's cache key holds a per-process fingerprint: the
    # processes would not share entries (tests/test_multiprocess.py runs them without a cache).
    log.info("compilation cache off: %d CPU processes", jax.process_count())
    return None
  Path(folder).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  log.info("compilation cache: %s", folder)
  return folder
