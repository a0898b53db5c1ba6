"""The server's scheduler (llada_jax.serve.engine) on a transcriber that needs no model: requests
are grouped by batch key into batches of several rows, each answer is the one it gets alone, a
full queue refuses, a batch that raises fails only its own requests, a request whose client left
frees its windows; and the queues the cascade and the engine share."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest

from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.cascade import Cascade, Queues
from llada_jax.inference.transcriber import Transcriber
from llada_jax.serve.engine import Engine, QueueFull, Stopped

POISON = 7.0  # a first sample that makes a batch raise


class Digest(Transcriber):
  """Text = a function of the row's own audio (its length and sum) and id; a batch holding a row
  whose first sample is POISON raises. Records the batches it ran."""

  name = "digest"

  def __init__(self, batch_size: int = 4):
    super().__init__(batch_size)
    self.buckets = (8000, 16000, 32000)
    self.max_seconds = 2.0
    self.batches: list[list[str]] = []

  def transcribe(self, batch: AudioBatch):
    if any(v and a[0] == POISON for v, a in zip(batch.valid, batch.audio)):
      raise RuntimeError("poisoned batch")
    self.batches.append([i for i, v in zip(batch.ids, batch.valid) if v])
    return [(f"{n} {a[:n].sum():.3f} {i}", None) if v else ("", None)
            for n, a, i, v in zip(batch.audio_len, batch.audio, batch.ids, batch.valid)]


def audio(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)


def engine(t: Digest, **kw) -> Engine:
  e = Engine({"m": Cascade(t)}, **kw)
  e.start(warm_up=False)
  return e


def test_queues_by_key_full_first_and_drop():
  q = Queues()
  for i in range(5):
    q.add("a" if i % 2 else "b", i, now=float(i))
  assert len(q) == 5 and q.full(3) == "b" and q.full(4) is None
  assert q.first() == ("b", 0.0) and q.first(rank=lambda k: k != "a") == ("a", 1.0)
  # `among`: the engine's batch path skips the queues of block-scheduled models
  assert q.full(2, among=lambda k: k == "a") == "a" and q.full(3, among=lambda k: k == "a") is None
  assert q.first(among=lambda k: k == "a") == ("a", 1.0) and q.first(among=lambda k: 0) is None
  assert sorted(q.keys()) == ["a", "b"]
  assert q.take("b", 2) == [0, 2] and q.drop(lambda i: i != 3) == 1
  assert q.take("a", 9) == [1] and q.take("b", 9) == [4] and q.first() is None


def test_requests_share_batches_by_key_and_get_their_solo_answers():
  lengths = [3000, 9000, 20000, 5000, 12000, 7000, 30000, 16000, 800, 25000]
  solo_t = Digest()
  solo = engine(solo_t, max_wait_ms=0)
  want = [solo.submit("m", audio(n, i)).future.result(30).text for i, n in enumerate(lengths)]
  solo.stop()
  t = Digest()
  e = engine(t, max_wait_ms=200)
  tickets = [e.submit("m", audio(n, i)) for i, n in enumerate(lengths)]
  got = [tk.future.result(30).text for tk in tickets]
  e.stop()
  assert got == want
  assert max(len(b) for b in t.batches) > 1, t.batches
  width = {tk.job.id: Digest().width_for(n) for tk, n in zip(tickets, lengths)}
  for b in t.batches:  # one bucket per batch
    assert len({width[i.split("#")[0]] for i in b}) == 1, b


def test_long_audio_is_cut_into_windows_and_merged_with_segments():
  t = Digest()
  e = engine(t, max_wait_ms=0)
  r = e.submit("m", audio(80000, 1)).future.result(30)  # 5 s: windows of 2 s
  e.stop()
  assert r.windows == len(r.segments) == 4 and r.segments[0].start == 0
  assert r.segments[-1].end == 5.0
  assert all(a.end == b.start for a, b in zip(r.segments, r.segments[1:]))


def test_a_full_queue_refuses_and_a_stopped_engine_too():
  t = Digest()
  e = Engine({"m": Cascade(t)}, max_wait_ms=0, max_queue=2)  # not started: nothing leaves
  e.submit("m", audio(100, 0))
  e.submit("m", audio(100, 1))
  with pytest.raises(QueueFull, match="2 requests"):
    e.submit("m", audio(100, 2))
  with pytest.raises(KeyError):
    e.submit("other", audio(100, 2))
  e.start(warm_up=False)
  e.stop()
  with pytest.raises(Stopped):
    e.submit("m", audio(100, 3))


def test_a_failing_batch_fails_its_requests_only():
  t = Digest()
  e = Engine({"m": Cascade(t)}, max_wait_ms=0)
  bad = audio(4000, 0)
  bad[0] = POISON
  # the poisoned request and a short one share a batch (same bucket); a long one does not
  same, poisoned, other = (e.submit("m", audio(5000, 1)), e.submit("m", bad),
                           e.submit("m", audio(20000, 2)))
  e.start(warm_up=False)
  for tk in (same, poisoned):
    with pytest.raises(RuntimeError, match="poisoned"):
      tk.future.result(30)
  assert other.future.result(30).text.startswith("20000 ")
  after = e.submit("m", audio(5000, 1)).future.result(30)  # the thread goes on
  e.stop()
  assert after.text.startswith("5000 ") and e.in_flight == 0


def test_a_cancelled_request_leaves_the_queues_and_the_others_are_answered():
  t = Digest()
  e = Engine({"m": Cascade(t)}, max_wait_ms=0)
  gone = e.submit("m", audio(60000, 0))  # 2 windows
  kept = e.submit("m", audio(6000, 1))
  e.cancel(gone)
  assert e.in_flight == 1
  with pytest.raises(concurrent.futures.CancelledError):
    gone.future.result(0)
  e.start(warm_up=False)
  assert kept.future.result(30).text.startswith("6000 ")
  e.stop()
  assert all(gone.job.id not in i for b in t.batches for i in b)


def test_max_wait_gathers_requests_that_arrive_together():
  t = Digest()
  e = engine(t, max_wait_ms=300)
  tickets = []
  for i in range(3):
    tickets.append(e.submit("m", audio(4000, i)))
    time.sleep(0.01)
  for tk in tickets:
    tk.future.result(30)
  e.stop()
  assert [len(b) for b in t.batches] == [3]


def test_segments_split_the_merged_text_where_the_windows_join():
  from llada_jax.inference.long_audio import Windowing, merge_chunks

  w = Windowing(window=16000, stride=4000)  # 1 s windows overlapping by 0.5 s: a step of 0.5 s
  texts = ["one two three four", "three four five six", "five six seven"]
  segments = w.segments(texts, 32000)  # 2 s of audio: windows from 0, 0.5 and 1 s
  assert " ".join(s.text for s in segments) == merge_chunks(texts)
  assert [(s.start, s.end) for s in segments] == [(0.0, 0.75), (0.75, 1.25), (1.25, 2.0)]
  assert [s.text for s in segments] == ["one two three", "four five", "six seven"]
  with pytest.raises(ValueError, match="2 texts for the 3 windows"):
    w.segments(texts[:2], 32000)
