"""The server's scheduler: one thread feeds the devices with fixed-shape batches built from the
windows of concurrent requests.

Each served model is a `Cascade` (a first pass, optionally deliberated). A request's audio is cut
into the cascade's windows, which wait in queues by (model, pass, batch key): windows batched only
with windows of their own key are decoded exactly as they would be alone (`Cascade`), so a
transcript does not depend on what else was in flight. The thread runs a queue when it holds a
full batch, or when its oldest window has waited `max_wait_ms` — counted from when the devices
became free, if they were busy when it came, so that clients answered by one batch can join the
next instead of two half-full batches taking turns; padding rows fill the rest of a partial
batch. Every shape a model can run is compiled by `warm_up` before the server says it is
ready. A batch that raises fails the requests it carried (their futures get the exception) and
the thread goes on.

A model given a `SlotDecoder` (`--schedule block`: standalone semi-AR / diffusion decoding) is
scheduled at block boundaries instead: its windows take free slots at once, each turn runs one
block for every busy slot, and a window leaves as soon as its EOS block is done, so a short
utterance is not held for the longest one of its batch and a newcomer does not wait for the batch
to end (benchmarks/RESULTS.md). A row's tokens are those of the whole-batch path. While both kinds
of model have work, turns alternate between them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import typing as tp

import numpy as np

from llada_jax.decoding.slots import SlotDecoder
from llada_jax.inference.cascade import Cascade, Job, Queues, Window
from llada_jax.inference.llada import utterance_seed

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
  """The engine holds `max_queue` requests already."""


class Stopped(RuntimeError):
  """The engine no longer takes requests (shutting down)."""


@dataclasses.dataclass
class Ticket:
  """One request in the engine: what its caller waits on."""

  model: str
  job: Job
  future: concurrent.futures.Future  # FileResult, or the exception of a failed batch
  arrived: float
  # Block-scheduled models: called (on the engine's thread) with the text committed so far
  # after each block, for a one-window request.
  on_text: tp.Callable[[str], None] | None = None


class Observer(tp.Protocol):
  """What the engine reports (the server's metrics)."""

  def batch(self, model: str, stage: int, rows: int, size: int, seconds: float) -> None: ...

  def depth(self, windows: int, requests: int) -> None: ...


class _Silent:
  def batch(self, model, stage, rows, size, seconds):
    pass

  def depth(self, windows, requests):
    pass


class Engine:
  """Requests → `FileResult`s through the served cascades (see the module docstring)."""

  def __init__(self, models: tp.Mapping[str, Cascade], *, max_wait_ms: float = 10.0,
               max_queue: int = 256, observer: Observer | None = None,
               slots: tp.Mapping[str, SlotDecoder] | None = None):
    if not models:
      raise ValueError("Engine: no model to serve")
    self.models = dict(models)
    self.slots = dict(slots or {})  # model → its block-boundary scheduler
    for name in self.slots:
      if name not in self.models or self.models[name].deliberation is not None:
        raise ValueError(f"Engine: slots for {name!r}: expected a served model without "
                         f"deliberation")
    self._slot_turn = False  # alternates block turns with batches while both have work
    self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
    self.max_queue = int(max_queue)
    self.observer = observer or _Silent()
    self._queues = Queues()
    self._tickets: dict[int, Ticket] = {}  # id(job) → its ticket
    self._cond = threading.Condition()
    self._stopping = False
    self._thread: threading.Thread | None = None
    self._idle_since = 0.0  # when the last batch ended
    self.ready = threading.Event()
    self.compile_seconds = 0.0

  # -- start and stop ----------------------------------------------------------------------------

  def warm_up(self) -> None:
    """Compile every shape of every served model (`Cascade.warm_up`); a transcriber shared by
    several models compiles once."""
    start, done = time.perf_counter(), set()
    for name, cascade in self.models.items():
      if name in self.slots:
        self.slots[name].warm_up()
        log.info("%s: block-scheduled %s ready, %d slots", name, cascade.first.name,
                 self.slots[name].rows)
        continue
      for stage, (t, shapes) in enumerate(zip(cascade.stages, cascade.warm_up(done))):
        log.info("%s: pass %d (%s) ready, %d shape(s)", name, stage + 1, t.name, shapes)
    self.compile_seconds = time.perf_counter() - start
    log.info("every shape compiled in %.1f s", self.compile_seconds)

  def start(self, warm_up: bool = True) -> None:
    """Compile (unless told not to), then run the scheduler thread; `ready` is set after."""
    if warm_up:
      self.warm_up()
    self._thread = threading.Thread(target=self._loop, name="llada-jax-engine", daemon=True)
    self._thread.start()
    self.ready.set()

  def stop(self, timeout: float | None = None) -> None:
    """Take no more requests, finish every one in the queues, stop the thread."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)

  # -- requests ----------------------------------------------------------------------------------

  def submit(self, model: str, audio: np.ndarray, name: str = "audio",
             on_text: tp.Callable[[str], None] | None = None) -> Ticket:
    """Queue one file's audio (float32 [n], 16 kHz) for `model`; KeyError for a model not
    served, QueueFull / Stopped when it cannot take more. `on_text`: see `Ticket` (ValueError
    for a model that is not block-scheduled)."""
    cascade = self.models[model]
    if on_text is not None and model not in self.slots:
      raise ValueError(f"{model}: partial texts come from block-scheduled models only")
    windows = cascade.start(0, name, audio)
    with self._cond:
      if self._stopping:
        raise Stopped("the server is shutting down")
      if len(self._tickets) >= self.max_queue:
        raise QueueFull(f"{len(self._tickets)} requests in flight (the server's max_queue)")
      now = time.monotonic()
      ticket = Ticket(model, windows[0].job, concurrent.futures.Future(), now, on_text)
      ticket.future.set_running_or_notify_cancel()
      self._tickets[id(ticket.job)] = ticket
      for w in windows:
        self._queues.add((model, cascade.key(w)), w, now)
      self._report()
      self._cond.notify_all()
    return ticket

  def cancel(self, ticket: Ticket) -> None:
    """Forget a request whose client left: its waiting windows leave the queues (a batch already
    running finishes without it being told); the other requests are untouched."""
    with self._cond:
      ticket.job.cancelled = True
      self._tickets.pop(id(ticket.job), None)
      self._queues.drop(lambda w: not w.job.cancelled)
      self._report()
    if not ticket.future.done():
      ticket.future.set_exception(concurrent.futures.CancelledError("the client disconnected"))

  @property
  def in_flight(self) -> int:
    with self._cond:
      return len(self._tickets)

  # -- the thread --------------------------------------------------------------------------------

  def _report(self) -> None:
    self.observer.depth(len(self._queues), len(self._tickets))

  def _slot_work(self) -> tuple[str, list[Window]] | None:
    """A block-scheduled model with work (busy slots or windows waiting) and the windows that
    take its free slots now; None if there is none. (Under the lock.)"""
    for model, dec in self.slots.items():
      keys = [k for k in self._queues.keys() if k[0] == model]
      if dec.busy or keys:
        windows: list[Window] = []
        for k in keys:
          windows += self._queues.take(k, dec.free - len(windows))
        return model, windows
    return None

  def _next(self) -> tuple[str, list[Window], bool] | None:
    """What to run now, waiting until something is due: (model, windows, whether it is a block
    turn of a block-scheduled model); None when stopped and drained."""
    size = lambda key: self.models[key[0]].batch_size  # noqa: E731
    batched = lambda key: key[0] not in self.slots  # noqa: E731
    with self._cond:
      while True:
        blocks = self._slot_work() if self._slot_turn or not self._queues.first(
            among=batched) else None
        self._slot_turn = not self._slot_turn
        if blocks is not None:
          self._report()
          return *blocks, True
        key = self._queues.full(size, among=batched)
        if key is None:
          head = self._queues.first(among=batched)
          if head is None:  # and no block turn is due: `_slot_work` found none just now
            if self._stopping:
              return None
            self._cond.wait()
            continue
          key, arrived = head
          # counted from when the devices became free if they were busy: the requests the last
          # batch answered come back within a client's turnaround and can fill this one
          wait = max(arrived, self._idle_since) + self.max_wait - time.monotonic()
          if wait > 0 and not self._stopping:
            self._cond.wait(wait)
            continue
        windows = self._queues.take(key, size(key))
        self._report()
        return key[0], windows, False

  def _loop(self) -> None:
    while (item := self._next()) is not None:
      model, windows, block_turn = item
      if block_turn:
        self._block(model, windows)
        continue
      cascade, stage = self.models[model], windows[0].stage
      start = time.perf_counter()
      try:
        onward, done = cascade.run(windows)
        results = [cascade.result(job) for job in done]
      except Exception as e:  # noqa: BLE001 (one batch's failure fails its requests only)
        log.exception("%s: a batch of %d window(s) failed", model, len(windows))
        self._fail(windows, e)
        self._idle_since = time.monotonic()
        continue
      self.observer.batch(model, stage, len(windows), cascade.batch_size,
                          time.perf_counter() - start)
      self._finish(model, onward, done, results)

  def _finish(self, model: str, onward: list[Window], done: list[Job], results: list) -> None:
    """After a batch or block turn: `onward` windows queue for their next pass, each job in
    `done` answers its ticket with its result."""
    cascade = self.models[model]
    with self._cond:
      self._idle_since = time.monotonic()
      for w in onward:  # the next pass: due as soon as the devices are free
        ticket = self._tickets.get(id(w.job))
        if ticket is not None:
          self._queues.add((model, cascade.key(w)), w, ticket.arrived)
      finished = [self._tickets.pop(id(job), None) for job in done]
      self._report()
    for ticket, result in zip(finished, results):
      if ticket is not None and not ticket.future.done():
        ticket.future.set_result(result)

  def _block(self, model: str, newcomers: list[Window]) -> None:
    """One block turn of a block-scheduled model: `newcomers` take free slots, every busy slot
    runs one block, the windows that are done finish (their jobs, when it was the last)."""
    dec, cascade = self.slots[model], self.models[model]
    t = cascade.first
    start, finished = time.perf_counter(), []
    try:
      dec.admit([(w, w.audio, utterance_seed(w.id)) for w in newcomers])
      rows = dec.busy
      finished = dec.step()
      done = [job for f in finished
              if (job := cascade.record(f.id, t.text_of(f.tokens))[1]) is not None]
      results = [cascade.result(job) for job in done]
    except Exception as e:  # noqa: BLE001 (the rows in the slots fail; the decoder starts empty)
      log.exception("%s: a block step of %d row(s) failed", model, dec.busy)
      windows = [*dec.owners(), *newcomers, *(f.id for f in finished)]
      dec.reset()
      self._fail(list({id(w): w for w in windows}.values()), e)
      self._idle_since = time.monotonic()
      return
    self.observer.batch(model, 0, rows, dec.rows, time.perf_counter() - start)
    self._partial(dec, t)
    self._finish(model, [], done, results)

  def _partial(self, dec: SlotDecoder, t) -> None:
    """The committed text of each busy one-window request that asked for it."""
    with self._cond:
      streams = {id(w): ticket for w in dec.owners() if len(w.job.first) == 1 and (
          ticket := self._tickets.get(id(w.job))) is not None and ticket.on_text is not None}
    if streams:
      for w, tokens in dec.committed():
        if id(w) in streams:
          streams[id(w)].on_text(t.text_of(tokens)[0])

  def _fail(self, windows: list[Window], error: Exception) -> None:
    with self._cond:
      tickets = {id(w.job): self._tickets.pop(id(w.job), None) for w in windows}
      for w in windows:
        w.job.cancelled = True
      self._queues.drop(lambda w: not w.job.cancelled)
      self._report()
    for ticket in tickets.values():
      if ticket is not None and not ticket.future.done():
        ticket.future.set_exception(error)
