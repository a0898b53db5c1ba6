"""train/tensorboard.py against tensorboardX (the reference writer, and its generated protobuf
classes for TensorFlow's event.proto): the same bytes for each event, the same record framing,
and files that parse back to what was logged."""

import struct

import numpy as np
import pytest

from llada_jax.train import tensorboard as tb

tbx = pytest.importorskip("tensorboardX")
from tensorboardX.crc32c import crc32c as their_crc32c  # noqa: E402
from tensorboardX.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboardX.record_writer import RecordWriter  # noqa: E402


def test_crc32c():
  assert tb.crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value
  rng = np.random.default_rng(0)
  for n in (0, 1, 7, 8, 100, 4099):
    data = rng.bytes(n)
    assert tb.crc32c(data) == their_crc32c(data)


def _their_event(wall_time, step=0, *, file_version=None, scalars=None, session_start=False):
  e = event_pb2.Event(wall_time=wall_time, step=step)
  if file_version:
    e.file_version = file_version.decode()
  if scalars:
    e.summary.CopyFrom(summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]))
  if session_start:
    e.session_log.status = event_pb2.SessionLog.START
  return e.SerializeToString()


@pytest.mark.parametrize("kwargs", [
    dict(wall_time=1765000000.123456, file_version=tb.FILE_VERSION),
    dict(wall_time=1765000000.5, step=7, file_version=tb.FILE_VERSION),
    dict(wall_time=1765000001.25, step=300, session_start=True),
    dict(wall_time=1765000002.0, step=1, scalars={"train/loss": 2.345678901}),
    dict(wall_time=1765000002.0, step=123456789012, scalars={"eval/dev_wer": 0.0}),
    dict(wall_time=1765000002.0, step=-3, scalars={"train/lr": -1e-30, "train/x": float("inf")}),
    dict(wall_time=0.0, step=0, scalars={"train/ü": 1.0}),
])
def test_events_are_the_bytes_tensorboardx_writes(kwargs):
  assert tb.event(**kwargs) == _their_event(**kwargs)


def test_records_are_framed_as_tensorboardx_frames_them(tmp_path):
  datas = [b"", b"x", _their_event(1.5, 2, scalars={"a": 1.0}), bytes(range(256)) * 3]
  writer = RecordWriter(str(tmp_path / "theirs"))
  for d in datas:
    writer.write(d)
  writer.close()
  assert (tmp_path / "theirs").read_bytes() == b"".join(tb.record(d) for d in datas)


def _read_events(path):
  raw, events, at = path.read_bytes(), [], 0
  while at < len(raw):
    (n,) = struct.unpack("<Q", raw[at:at + 8])
    assert struct.unpack("<I", raw[at + 8:at + 12])[0] == tb._masked_crc(raw[at:at + 8])
    data = raw[at + 12:at + 12 + n]
    assert struct.unpack("<I", raw[at + 12 + n:at + 16 + n])[0] == tb._masked_crc(data)
    events.append(event_pb2.Event.FromString(data))
    at += 16 + n
  return events


def test_a_resumed_run_s_file_parses_to_what_was_logged(tmp_path):
  writer = tb.ScalarWriter(tmp_path / "tb", purge_step=5)
  writer.add_scalars(5, {"train/loss": 1.25, "eval/val_loss": 0.1})
  writer.add_scalars(6, {"train/loss": 3})
  writer.close()
  (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
  events = _read_events(path)
  assert [e.file_version for e in events[:2]] == ["brain.Event:2"] * 2 and events[1].step == 5
  assert events[2].step == 5 and events[2].session_log.status == event_pb2.SessionLog.START
  got = [(e.step, v.tag, v.simple_value) for e in events[3:] for v in e.summary.value]
  assert got == [(5, "train/loss", 1.25), (5, "eval/val_loss", np.float32(0.1)),
                 (6, "train/loss", 3.0)]
  assert all(e.wall_time > 1e9 for e in events)


def test_training_s_modules_do_not_import_torch(tmp_path):
  """tensorboardX imported torch wherever it was installed (2.7 s of each train.py start)."""
  import subprocess
  import sys

  probe = ("import sys; import llada_jax.cli.train, llada_jax.train.loop; "
           "from llada_jax.train import tensorboard; "
           "tensorboard.ScalarWriter(sys.argv[1]).add_scalars(1, {'a': 1.0}); "
           "print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "False"
