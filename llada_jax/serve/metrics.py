"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
AUDIO_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Metrics:
  """Requests by model and status, the queue, batch fill, latency, audio seconds, compile time.
  Also the engine's observer."""

  def __init__(self):
    r = self.registry = CollectorRegistry()
    self.requests = Counter("llada_requests", "transcription requests by model and HTTP status",
                            ["model", "status"], registry=r)
    self.queue_windows = Gauge("llada_queue_windows", "audio windows waiting for a batch",
                               registry=r)
    self.in_flight = Gauge("llada_requests_in_flight", "requests accepted and not yet answered",
                           registry=r)
    self.batches = Counter("llada_batches", "batches run, by model and pass (1 first, "
                           "2 deliberation)", ["model", "stage"], registry=r)
    self.batch_rows = Counter("llada_batch_rows", "real (non-padding) rows in the batches run",
                              ["model", "stage"], registry=r)
    self.fill = Histogram("llada_batch_fill", "share of a batch's rows that carry audio",
                          ["model", "stage"], buckets=FILL_BUCKETS, registry=r)
    self.batch_seconds = Histogram("llada_batch_seconds", "seconds per batch", ["model", "stage"],
                                   buckets=LATENCY_BUCKETS, registry=r)
    self.latency = Histogram("llada_request_seconds", "seconds from a request's audio being read "
                             "to its answer", ["model"], buckets=LATENCY_BUCKETS, registry=r)
    self.audio = Histogram("llada_audio_seconds", "seconds of audio per request", ["model"],
                           buckets=AUDIO_BUCKETS, registry=r)
    self.compile = Gauge("llada_compile_seconds", "seconds spent compiling every shape at "
                         "start-up", registry=r)

  def batch(self, model: str, stage: int, rows: int, size: int, seconds: float) -> None:
    labels = (model, str(stage + 1))
    self.batches.labels(*labels).inc()
    self.batch_rows.labels(*labels).inc(rows)
    self.fill.labels(*labels).observe(rows / size)
    self.batch_seconds.labels(*labels).observe(seconds)

  def depth(self, windows: int, requests: int) -> None:
    self.queue_windows.set(windows)
    self.in_flight.set(requests)

  def text(self) -> bytes:
    return generate_latest(self.registry)
