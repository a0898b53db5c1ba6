"""Serve models over HTTP with the OpenAI audio API: concurrent requests share the compiled
batches, and any OpenAI client works unchanged.

    llada-jax serve --model whisper=ckpt/whisper-tiny.en --model llada=runs/paper/model \\
        --cascade deliberated=whisper,llada --port 8000
    curl -F file=@talk.wav -F model=deliberated http://127.0.0.1:8000/v1/audio/transcriptions

MODELS: each --model NAME=CKPT serves a converted Whisper, Whisper-LLaMA (AR) or Whisper-LLaDA
(--strategy: diffusion or semi_ar) under NAME; each --cascade NAME=FIRST,SECOND serves the
paper's cascade: the served model FIRST's transcript, deliberated by the served Whisper-LLaDA
SECOND (the deliberation options), window by window. The decoding options are those of
`llada-jax transcribe`; a model's transcript is the one `transcribe` writes for the same file,
options and batch size (--batch-size = --max-batch), whatever else the server is doing.

Endpoints: POST /v1/audio/transcriptions (multipart: file, model, response_format = json, text,
verbose_json, srt or vtt), GET /v1/models, GET /health (200 once every batch shape is compiled),
GET /metrics (Prometheus), and GET / (a page to try the models in a browser). Requests for the
same model are batched up to --max-batch windows, waiting at most --max-wait-ms for company.

Binds 127.0.0.1 unless --host says otherwise. With $LLADA_JAX_API_KEY set (or the variable
--api-key-env names), requests need `Authorization: Bearer KEY`. SIGTERM or Ctrl-C: no new
connections, every request in flight is answered, then the server exits 0. Docs: docs/serve.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import typing as tp

from llada_jax.cli import options
from llada_jax.cli.options import UsageError
from llada_jax.inference.errors import ModelError
from llada_jax.models.config import WhisperConfig, WhisperLLaDAConfig
from llada_jax.parallel import compile_cache

NAME = "serve"
HELP = "serve models over HTTP (the OpenAI audio API), batching concurrent requests"
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
API_KEY_ENV = "LLADA_JAX_API_KEY"
log = logging.getLogger(__name__)


def _pair(value: str) -> tuple[str, str]:
  name, sep, rest = value.partition("=")
  if not sep or not name or not rest:
    raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=VALUE")
  return name, rest


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model", type=_pair, action="append", default=[], metavar="NAME=CKPT",
                 help="serve a converted checkpoint under NAME (repeat for more); CKPT may be a "
                      "Hub id of a Whisper (ORG/NAME[@REVISION]), converted once")
  p.add_argument("--cascade", type=_pair, action="append", default=[], metavar="NAME=FIRST,SECOND",
                 help="serve served model FIRST deliberated by served Whisper-LLaDA SECOND")
  p.add_argument("--strategy", choices=("diffusion", "semi_ar"), default=None,
                 help="how a served Whisper-LLaDA decodes on its own (default: diffusion)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to bind (default: %(default)s, this machine only)")
  p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
  g = p.add_argument_group("batching and limits")
  g.add_argument("--max-batch", type=int, default=8,
                 help="windows per compiled batch, each model (default: %(default)s)")
  g.add_argument("--max-wait-ms", type=float, default=10.0,
                 help="how long a window waits for others to fill its batch (default: "
                      "%(default)s)")
  g.add_argument("--schedule", choices=("batch", "block"), default="batch",
                 help="batch: each compiled batch runs to its end (every model); block: each "
                      "Whisper-LLaDA served on its own (--strategy semi_ar / diffusion) runs "
                      "--max-batch slots fed at block boundaries: a finished window leaves after "
                      "its block and a waiting one takes the slot, same transcripts (default: "
                      "%(default)s; docs/serve.md)")
  g.add_argument("--max-queue", type=int, default=256,
                 help="requests in flight before new ones get 503 (default: %(default)s)")
  g.add_argument("--max-upload-mb", type=float, default=25.0,
                 help="largest upload (default: %(default)s, as the OpenAI API)")
  g.add_argument("--max-audio-seconds", type=float, default=600.0,
                 help="longest audio (default: %(default)s)")
  g.add_argument("--api-key-env", default=API_KEY_ENV, metavar="VAR",
                 help="environment variable holding the API key; unset: no key needed "
                      "(default: %(default)s)")
  options.add_compile_cache(p)
  options.add_devices(p)
  options.add_decoding(p, llada_title="Whisper-LLaDA / -LLaMA decoding (each served model)",
                       deliberation_title="deliberation (each --cascade)")


def plan(args: argparse.Namespace) -> dict[str, tp.Any]:
  """What to serve, checked before anything loads: {name: (kind, checkpoint, settings)} for the
  models and {name: (first, second)} for the cascades."""
  if not args.model:
    raise UsageError("--model NAME=CKPT: nothing to serve")
  models: dict[str, tuple] = {}
  for name, path in args.model:
    if name in models:
      raise UsageError(f"--model {name}: named twice")
    path = options.checkpoint(path, f"--model {name}={path}")
    config = options.read_config(path, f"--model {name}={path}")
    if isinstance(config, WhisperConfig):
      models[name] = ("whisper", path, options.whisper_settings(args))
    elif isinstance(config, WhisperLLaDAConfig):
      strategy = "ar" if config.lm.causal else (args.strategy or "diffusion")
      models[name] = ("whisper_llama" if config.lm.causal else "whisper_llada", path,
                      options.llada_settings(args, strategy))
    else:
      raise UsageError(f"--model {name}={path}: a {type(config).__name__}, not a speech model")
  cascades: dict[str, tuple[str, str]] = {}
  for name, spec in args.cascade:
    parts = spec.split(",")
    if name in models or name in cascades:
      raise UsageError(f"--cascade {name}: the name is taken")
    if len(parts) != 2 or any(p not in models for p in parts):
      raise UsageError(f"--cascade {name}={spec}: expected FIRST,SECOND, two served --model "
                       f"names (served: {', '.join(models)})")
    if models[parts[1]][0] != "whisper_llada":
      raise UsageError(f"--cascade {name}={spec}: {parts[1]} is a {models[parts[1]][0]}; "
                       f"deliberation needs a (bidirectional) Whisper-LLaDA")
    cascades[name] = (parts[0], parts[1])
  if not cascades and options.given(args, options.DELIBERATION_OPTIONS):
    raise UsageError(f"{', '.join(options.given(args, options.DELIBERATION_OPTIONS))}: only "
                     f"with --cascade")
  if args.schedule == "block" and not any(k == "whisper_llada" for k, _, _ in models.values()):
    raise UsageError("--schedule block: no --model is a Whisper-LLaDA to decode on its own "
                     "(Whisper, Whisper-LLaMA and cascades are scheduled by batch)")
  return {"models": models, "cascades": cascades,
          "deliberation": options.llada_settings(args, "deliberation") if cascades else None}


def build(args: argparse.Namespace, what: dict):
  """(engine, served models): the transcribers opened (a deliberating transcriber shares its
  model's loaded weights), one Cascade per served name."""
  from llada_jax import inference
  from llada_jax.inference.cascade import Cascade
  from llada_jax.serve.app import ServedModel
  from llada_jax.serve.engine import Engine

  kw = dict(batch_size=args.max_batch, mesh=args.placement, dtype=args.dtype,
            attention=args.attention, merge_lora=not args.no_merge_lora,
            quantize=args.quantize)
  stride = options.chunk_stride(args)
  cascades, served = {}, []
  opened = {}
  try:
    for name, (kind, path, settings) in what["models"].items():
      opened[name] = inference.open(path, settings, **kw)
      cascades[name] = Cascade(opened[name], chunk_stride=stride)
      language = settings.language if kind == "whisper" else None
      served.append(ServedModel(name, kind, f"{kind} {os.path.basename(path.rstrip('/'))} "
                                f"({opened[name].name})", language))
    for name, (first, second) in what["cascades"].items():
      delib = inference.open(what["models"][second][1], what["deliberation"], **kw)
      cascades[name] = Cascade(opened[first], delib, chunk_stride=stride)
      served.append(ServedModel(name, "cascade", f"{first} deliberated by {second}",
                                next(m.language for m in served if m.name == first)))
  except ModelError as e:
    raise UsageError(str(e)) from e
  except ValueError as e:  # a stride leaving no step
    raise UsageError(f"--chunk-stride {stride}: {e}") from e
  slots = {}
  for name, (kind, _, _) in what["models"].items() if args.schedule == "block" else ():
    if kind == "whisper_llada":
      try:
        slots[name] = opened[name].slot_decoder()
      except ValueError as e:
        raise UsageError(f"--schedule block: --model {name}: {e}") from e
  return Engine(cascades, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                slots=slots), served


def run(args: argparse.Namespace) -> int:
  for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                      ("--max-upload-mb", args.max_upload_mb),
                      ("--max-audio-seconds", args.max_audio_seconds)):
    if value <= 0:
      raise UsageError(f"{flag} {value}: expected > 0")
  if args.max_wait_ms < 0:
    raise UsageError(f"--max-wait-ms {args.max_wait_ms}: expected ≥ 0")
  compile_cache.enable(disable=args.no_compile_cache)
  import jax

  from llada_jax.parallel.placement import Placement, PlacementError

  if jax.process_count() > 1:
    raise UsageError("serve runs in one process (over all of its devices: --mesh)")
  try:
    args.placement = Placement.create(args.mesh, args.sharding)
    args.placement.global_batch(args.max_batch)
  except PlacementError as e:
    raise UsageError(f"--mesh / --max-batch: {e}") from e
  what = plan(args)
  api_key = os.environ.get(args.api_key_env) or None
  engine, served = build(args, what)

  import uvicorn

  from llada_jax.serve.app import Limits, create_app
  from llada_jax.serve.metrics import Metrics

  metrics = Metrics()
  engine.observer = metrics
  # Every temporary file of the process (uploads, and the multipart parser's spooled parts) goes
  # into a folder of the server's own, removed at exit.
  temp = tempfile.mkdtemp(prefix="llada-jax-serve-")
  tempfile.tempdir = temp
  app = create_app(engine, served, metrics=metrics, api_key=api_key, temp_dir=temp,
                   limits=Limits(max_upload_bytes=int(args.max_upload_mb * 2**20),
                                 max_audio_seconds=args.max_audio_seconds))
  log.info("serving %s on http://%s:%d (API key: %s)", ", ".join(m.name for m in served),
           args.host, args.port, f"${args.api_key_env}" if api_key else "none")
  # uvicorn shuts down gracefully on SIGTERM / SIGINT, then raises the signal again for the
  # handler it found: a no-op one makes that graceful stop exit 0.
  found = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=None)
  finally:
    for sig, handler in found.items():
      signal.signal(sig, handler)
    shutil.rmtree(temp, ignore_errors=True)
  log.info("stopped: every request answered")
  return 0


def main(argv: tp.Sequence[str] | None = None) -> int:
  """`llada-jax serve ARGS`."""
  return options.main(sys.modules[__name__], argv)
