"""Test set-up: 8 simulated CPU devices, so sharded code is exercised on one CPU."""

import os

# Must happen before jax is imported anywhere: XLA reads the flag once, at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
  """Real speech: espeak-ng renders a sentence; 16 kHz float32 mono."""
  from llada_jax.audio import load_audio

  wav = tmp_path_factory.mktemp("speech") / "fox.wav"
  subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav),
                  "The quick brown fox jumps over the lazy dog."], check=True)
  return load_audio(wav)
