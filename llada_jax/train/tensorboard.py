"""TensorBoard scalars, written directly: an event file is TFRecord-framed `Event` protocol
buffers (tensorflow/core/util/event.proto), and a scalar is one `Summary.Value` with a
`simple_value`. The handful of fields a scalar log needs are encoded here by hand, so training
needs neither TensorBoard nor tensorboardX (whose import brings in torch wherever it is installed,
seconds of every train.py start) and no protobuf runtime.

    events.out.tfevents.<unix time>.<host>   one file per writer, as TensorBoard names them
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

FILE_VERSION = b"brain.Event:2"
_SESSION_START = 1  # SessionLog.SessionStatus.START


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


# Protocol buffer wire format: a key (field number, wire type) before each value; proto3 leaves
# fields at their default (0, empty) out.

def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # int64: negatives as their 64-bit two's complement
  out = bytearray()
  while n > 0x7F:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire) + payload


def _message(number: int, body: bytes) -> bytes:
  return _field(number, 2, _varint(len(body)) + body)


def event(wall_time: float, step: int = 0, *, file_version: bytes | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
  """An `Event`: wall_time (1, double), step (2, int64), file_version (3), summary (5, a
  `Summary` of `Value`s: tag 1, simple_value 2 as float32), session_log (7, status 1)."""
  out = _field(1, 1, struct.pack("<d", wall_time)) if wall_time else b""
  if step:
    out += _field(2, 0, _varint(int(step)))
  if file_version:
    out += _message(3, file_version)
  if scalars:
    out += _message(5, b"".join(
        _message(1, _message(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
        for tag, value in scalars.items()))
  if session_start:
    out += _message(7, _field(1, 0, _varint(_SESSION_START)))
  return out


class ScalarWriter:
  """Scalars into a new event file under `logdir`, flushed at each write (a crash loses
  nothing written). With `purge_step` (a resumed run), TensorBoard drops what earlier files of
  the folder logged from that step on: the log then reads as one run."""

  def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
    self.file = open(self.path, "ab")
    self._write([event(now, file_version=FILE_VERSION)])
    if purge_step is not None:
      self._write([event(now, purge_step, file_version=FILE_VERSION),
                   event(now, purge_step, session_start=True)])

  def _write(self, events: list[bytes]) -> None:
    self.file.write(b"".join(map(record, events)))
    self.file.flush()

  def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """One event per tag (as TensorBoard's own writers log scalars)."""
    now = time.time()
    self._write([event(now, step, scalars={tag: float(value)}) for tag, value in scalars.items()])

  def close(self) -> None:
    self.file.close()
