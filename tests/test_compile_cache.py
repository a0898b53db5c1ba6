"""The persistent compilation cache the entry points turn on (parallel.compile_cache): a second
process loads what the first compiled. Asserted through JAX's own cache events (a miss written,
a hit read), never through seconds: a loaded CI machine must not fail it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Compiles the tiny Whisper-LLaDA's forward (audio → encoder → Q-Former → LM logits) from
# abstract weights, as an entry point would after `compile_cache.enable()`; prints the cache
# events JAX recorded while compiling it.
SCRIPT = """
import collections, json, sys
import jax, jax.numpy as jnp
from flax import nnx
from llada_jax.parallel import compile_cache
from llada_jax.models.config import WhisperLLaDAConfig
from llada_jax.models.whisper_llada import WhisperLLaDA

events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **_: events.update([event.rsplit("/", 1)[-1]]))
folder = compile_cache.enable(disable="--no-compile-cache" in sys.argv)
model = nnx.eval_shape(lambda: WhisperLLaDA(WhisperLLaDAConfig.tiny_test(), rngs=nnx.Rngs(0)))
graphdef, state = nnx.split(model)

def forward(state, mel, tokens):
  m = nnx.merge(graphdef, state)
  audio = m.audio_embeds(mel)
  return m.lm(embeds=jnp.concatenate([audio, m.lm.embed(tokens)], axis=1))

lowered = jax.jit(forward).lower(state, jax.ShapeDtypeStruct((2, 80, 200), jnp.float32),
                                 jax.ShapeDtypeStruct((2, 16), jnp.int32))
lowered.compile()
print(json.dumps({"folder": folder, "hits": events["cache_hits"],
                  "misses": events["cache_misses"]}))
"""


def compile_once(env: dict, *args: str) -> dict:
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_compiled_executable(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.update(LLADA_JAX_CACHE_DIR=str(tmp_path / "xla"), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
  first = compile_once(env)
  assert first["folder"] == str(tmp_path / "xla") and any((tmp_path / "xla").iterdir())
  assert (first["hits"], first["misses"]) == (0, 1), first
  written = sorted(p.name for p in (tmp_path / "xla").iterdir())
  second = compile_once(env)
  assert (second["hits"], second["misses"]) == (1, 0), second
  assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == written  # read, not rewritten
  # Off: nothing is read or written.
  off = compile_once(env, "--no-compile-cache")
  assert off["folder"] is None and (off["hits"], off["misses"]) == (0, 0), off
  assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == written
  # A user's JAX_COMPILATION_CACHE_DIR wins over ours.
  user = compile_once(dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "user"),
                           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
  assert user["folder"] == str(tmp_path / "user") and any((tmp_path / "user").iterdir())
  assert (user["hits"], user["misses"]) == (0, 1), user
