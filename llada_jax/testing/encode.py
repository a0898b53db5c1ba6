"""Compressed audio files for tests and the fuzzer: 16-bit mono PCM encoded with FFmpeg through
PyAV (mp3, m4a/aac, …: the formats the PyAV decoding path reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encode_pcm16(data: np.ndarray, rate: int, out: Path, codec: str,
                 container: str | None = None) -> None:
  """Write int16 mono `data` at `rate` Hz to `out` as `codec` (in `container`, default: by the
  file name)."""
  import av

  with av.open(str(out), "w", format=container) as c:
    stream = c.add_stream(codec, rate=rate, layout="mono")
    frame = av.AudioFrame.from_ndarray(np.asarray(data, np.int16)[None, :], format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    for packet in [*stream.encode(frame), *stream.encode(None)]:
      c.mux(packet)
