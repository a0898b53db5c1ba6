"""The HTTP side of `llada-jax serve`: the OpenAI audio API over the engine (Starlette, ASGI).

    POST /v1/audio/transcriptions   multipart: file, model, response_format, …  → the transcript
    GET  /v1/models                 the served models
    GET  /health                    200 once every shape is compiled, 503 before
    GET  /metrics                   Prometheus text format
    GET  /                          a page to try the models from a browser

Bad input is a 4xx whose OpenAI-style error body names the field or the problem: 400 a missing,
unknown or unsupported field or an unreadable file, 401 a missing or wrong API key, 404 a model
not served, 413 an upload or audio over the limits, 503 a full queue (with Retry-After) or a
server not ready yet. A batch that fails answers 500 with an id that the log names too. Uploads
are written only into the server's own temporary folder, under names of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import re
import tempfile
import time
import typing as tp
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llada_jax.data.audio import SAMPLE_RATE, AudioError, load_audio
from llada_jax.serve import formats
from llada_jax.serve.engine import Engine, QueueFull, Stopped
from llada_jax.serve.metrics import Metrics

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The OpenAI fields a request may carry; `_check` checks their values.
FIELDS = ("file", "model", "response_format", "language", "prompt", "temperature",
          "timestamp_granularities[]", "timestamp_granularities", "stream", "chunking_strategy",
          "include[]", "include")
_NAMES = {"en": "english"}  # a language code → the name a request may give instead
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")


@dataclasses.dataclass(frozen=True)
class Limits:
  max_upload_bytes: int = 25 * 2**20  # the OpenAI API's own limit
  max_audio_seconds: float = 600.0
  poll_seconds: float = 0.1  # how often a waiting request checks that its client is still there


@dataclasses.dataclass(frozen=True)
class ServedModel:
  """What /v1/models says of a model, and the language its transcripts are in."""

  name: str
  kind: str  # whisper, whisper_llada, whisper_llama or cascade
  description: str
  language: str | None = None  # None: any (the request's `language` is not checked)


class HTTPError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None,
               headers: dict | None = None, kind: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.headers, self.kind = (status, message, param,
                                                                      headers, kind)

  def response(self) -> JSONResponse:
    return JSONResponse({"error": {"message": self.message, "type": self.kind,
                                   "param": self.param, "code": None}},
                        status_code=self.status, headers=self.headers)


class _TooLarge(Exception):
  pass


class UploadLimit:
  """ASGI middleware: a request body over `limit` bytes stops being read (413), whether or not
  it declared its length."""

  def __init__(self, app, limit: int):
    self.app, self.limit = app, limit

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    length = dict(scope.get("headers") or []).get(b"content-length")
    if length is not None and length.isdigit() and int(length) > self.limit:
      response = HTTPError(413, f"upload of {int(length)} bytes is over the server's limit of "
                                f"{self.limit} bytes").response()
      return await response(scope, receive, send)
    seen = 0

    async def counted():
      nonlocal seen
      message = await receive()
      if message["type"] == "http.request":
        seen += len(message.get("body", b""))
        if seen > self.limit:
          raise _TooLarge(f"upload over the server's limit of {self.limit} bytes")
      return message

    await self.app(scope, counted, send)


def create_app(engine: Engine, models: tp.Sequence[ServedModel], *, limits: Limits = Limits(),
               api_key: str | None = None, metrics: Metrics | None = None,
               temp_dir: str | None = None) -> tp.Any:
  """The ASGI app. The engine warms up (compiles) on a thread when the app starts
  (/health says 503 until it is done) and drains when the app stops."""
  metrics = metrics or Metrics()
  served = {m.name: m for m in models}
  missing = set(engine.models) ^ set(served)
  if missing:
    raise ValueError(f"models {sorted(missing)}: in the engine or the list, not both")
  started = time.time()
  own_temp = temp_dir is None
  temp = Path(temp_dir or tempfile.mkdtemp(prefix="llada-jax-serve-"))
  warm_error: list[BaseException] = []

  def authorize(request: Request) -> None:
    if api_key is None:
      return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
      raise HTTPError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                      kind="authentication_error")

  async def transcriptions(request: Request) -> Response:
    model = "-"
    status = 500
    try:
      authorize(request)
      if not engine.ready.is_set():
        raise HTTPError(503, "the server is still compiling its models; try again shortly",
                        headers={"Retry-After": "5"})
      form = await _form(request)
      try:
        model, fmt, language, stream = _check(form, served, set(engine.slots))
        upload = form["file"]
        path = await asyncio.to_thread(_save, upload, temp)
      finally:
        await form.close()
      try:
        audio = await asyncio.to_thread(_decode, path, upload.filename or "file")
      finally:
        path.unlink(missing_ok=True)
      seconds = audio.shape[0] / SAMPLE_RATE
      if seconds > limits.max_audio_seconds:
        raise HTTPError(413, f"file: {seconds:.1f} s of audio is over the server's limit of "
                             f"{limits.max_audio_seconds:g} s", param="file")
      t0 = time.perf_counter()
      if stream:
        status = 200
        return StreamingResponse(
            _stream(request, engine, model, audio, upload.filename or "file", limits,
                    lambda: (metrics.latency.labels(model).observe(time.perf_counter() - t0),
                             metrics.audio.labels(model).observe(seconds))),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
      result = await _wait(request, engine, model, audio, upload.filename or "file", limits)
      if result is None:
        status = 499  # the client left; nobody reads this response
        return Response(status_code=499)
      if result.error is not None:
        raise HTTPError(400, f"file {upload.filename}: {result.error}", param="file")
      metrics.latency.labels(model).observe(time.perf_counter() - t0)
      metrics.audio.labels(model).observe(seconds)
      body = formats.render(result, fmt, model, language or served[model].language)
      status = 200
      if isinstance(body, dict):
        return JSONResponse(body)
      return Response(body, media_type=formats.MEDIA[fmt])
    except HTTPError as e:
      status = e.status
      return e.response()
    except _TooLarge as e:
      status = 413
      return HTTPError(413, str(e)).response()
    finally:
      metrics.requests.labels(model, str(status)).inc()

  async def list_models(request: Request) -> Response:
    try:
      authorize(request)
    except HTTPError as e:
      return e.response()
    return JSONResponse({"object": "list", "data": [
        {"id": m.name, "object": "model", "created": int(started), "owned_by": "llada-jax",
         "kind": m.kind, "description": m.description} for m in models]})

  async def health(request: Request) -> Response:
    if warm_error:
      return JSONResponse({"status": "failed", "error": str(warm_error[0])}, status_code=500)
    if not engine.ready.is_set():
      return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ok", "models": list(served),
                         "compile_seconds": round(engine.compile_seconds, 3)})

  async def prometheus(request: Request) -> Response:
    return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

  async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

  @contextlib.asynccontextmanager
  async def lifespan(app):
    def warm():
      try:
        engine.start()
        metrics.compile.set(engine.compile_seconds)
      except BaseException as e:  # noqa: BLE001 (reported by /health and the log)
        log.exception("compiling the served models failed")
        warm_error.append(e)

    thread = asyncio.get_running_loop().run_in_executor(None, warm)
    try:
      yield
    finally:
      await thread
      await asyncio.to_thread(engine.stop)
      if own_temp:
        for f in temp.glob("*"):
          f.unlink(missing_ok=True)
        temp.rmdir()

  app = Starlette(routes=[
      Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
      Route("/v1/models", list_models, methods=["GET"]),
      Route("/health", health, methods=["GET"]),
      Route("/metrics", prometheus, methods=["GET"]),
      Route("/", page, methods=["GET"]),
  ], lifespan=lifespan)
  return UploadLimit(app, limits.max_upload_bytes)


async def _form(request: Request):
  kind = request.headers.get("content-type", "")
  if not kind.startswith("multipart/form-data"):
    raise HTTPError(400, f"expected a multipart/form-data body (file, model, …), got "
                         f"{kind or 'no content type'!r}")
  try:
    return await request.form(max_files=1, max_fields=len(FIELDS), max_part_size=64 * 1024)
  except _TooLarge:
    raise
  except Exception as e:  # noqa: BLE001 (the multipart parser's errors have no common base)
    raise HTTPError(400, f"unreadable multipart body: {e}") from e


def _check(form, served: tp.Mapping[str, ServedModel], streams: tp.Collection[str] = ()
           ) -> tuple[str, str, str | None, bool]:
  """(model, response_format, language, stream) of a request, or the HTTPError naming what is
  wrong. `streams`: the models that can stream (block-scheduled)."""
  unknown = sorted(set(form.keys()) - set(FIELDS))
  if unknown:
    raise HTTPError(400, f"{unknown[0]}: not a field of this API (fields: {', '.join(FIELDS)})",
                    param=unknown[0])
  upload = form.get("file")
  if not isinstance(upload, UploadFile):
    raise HTTPError(400, "file: missing (the audio, as a multipart file part)", param="file")
  model = form.get("model")
  if not isinstance(model, str) or not model:
    raise HTTPError(400, "model: missing", param="model")
  if model not in served:
    raise HTTPError(404, f"model {model!r} is not served here (served: {', '.join(served)})",
                    param="model", kind="not_found_error")
  fmt = form.get("response_format") or "json"
  if fmt not in formats.FORMATS:
    raise HTTPError(400, f"response_format {fmt!r}: expected one of {', '.join(formats.FORMATS)}",
                    param="response_format")
  language = form.get("language") or None
  expected = served[model].language
  if language is not None and expected is not None and language.lower() not in (
      expected, _NAMES.get(expected, expected)):
    raise HTTPError(400, f"language {language!r}: model {model!r} transcribes {expected!r}",
                    param="language")
  if form.get("prompt"):
    raise HTTPError(400, "prompt: not supported (the models take no text prompt)",
                    param="prompt")
  temperature = form.get("temperature")
  if temperature not in (None, ""):
    try:
      value = float(temperature)
    except ValueError:
      value = None
    if value != 0.0:
      raise HTTPError(400, f"temperature {temperature!r}: only 0 (the server's decoding settings "
                           f"are fixed per model at start-up)", param="temperature")
  for name in ("timestamp_granularities[]", "timestamp_granularities"):
    for value in form.getlist(name):
      if value != "segment":
        raise HTTPError(400, f"{name} {value!r}: only 'segment' timestamps (the windows of long "
                             f"audio)", param=name)
  stream = (form.get("stream") or "false").lower()
  if stream not in ("false", "0", "true", "1"):
    raise HTTPError(400, f"stream {stream!r}: expected true or false", param="stream")
  stream_on = stream in ("true", "1")
  if stream_on and model not in streams:
    raise HTTPError(400, f"stream: model {model!r} gives its transcript whole; only a "
                         f"block-scheduled Whisper-LLaDA streams it block by block",
                    param="stream")
  if stream_on and fmt not in ("json", "text"):
    raise HTTPError(400, f"stream: response_format {fmt!r} does not stream (json or text)",
                    param="response_format")
  if form.get("chunking_strategy") not in (None, "", "auto"):
    raise HTTPError(400, f"chunking_strategy {form.get('chunking_strategy')!r}: only 'auto' "
                         f"(the server's own windows)", param="chunking_strategy")
  for name in ("include[]", "include"):
    if form.getlist(name):
      raise HTTPError(400, f"{name}: not supported (no logprobs)", param=name)
  return model, fmt, language, stream_on



def _save(upload: UploadFile, folder: Path) -> Path:
  """The upload in a file of the server's own naming inside `folder`; only a short alphanumeric
  extension of the client's name is kept (the audio decoder goes by it)."""
  match = _EXTENSION.search(os.path.basename(upload.filename or ""))
  fd, name = tempfile.mkstemp(dir=folder, prefix="upload-",
                              suffix=match.group(0).lower() if match else "")
  with os.fdopen(fd, "wb") as out:
    upload.file.seek(0)
    while chunk := upload.file.read(1 << 20):
      out.write(chunk)
  return Path(name)


def _decode(path: Path, filename: str):
  try:
    return load_audio(path)
  except AudioError as e:
    # the message names our temporary file: name the client's instead
    raise HTTPError(400, f"file {str(e).replace(str(path), filename)}", param="file") from None


def _event(kind: str, **fields) -> bytes:
  return f"data: {json.dumps({'type': kind, **fields})}\n\n".encode()


async def _stream(request: Request, engine: Engine, model: str, audio, name: str,
                  limits: Limits, on_done: tp.Callable[[], tp.Any]):
  """The OpenAI transcription stream: a `transcript.text.delta` event per block that completes
  words (a partial last word waits for the next block), then `transcript.text.done` with the
  whole text; a failure is an `error` event. A client that leaves frees its row."""
  loop = asyncio.get_running_loop()
  texts: asyncio.Queue = asyncio.Queue()
  try:
    ticket = engine.submit(model, audio, name,
                           on_text=lambda t: loop.call_soon_threadsafe(texts.put_nowait, t))
  except (QueueFull, Stopped) as e:
    yield _event("error", error={"message": str(e), "type": "server_error"})
    return
  waiting = asyncio.wrap_future(ticket.future)
  sent = ""
  try:
    while not waiting.done():
      getter = asyncio.ensure_future(texts.get())
      done, _ = await asyncio.wait({waiting, getter}, timeout=limits.poll_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
      if getter in done:
        partial = getter.result()
        words = partial[: partial.rfind(" ") + 1]  # whole words: the last may still grow
        if words.startswith(sent) and len(words) > len(sent):
          yield _event("transcript.text.delta", delta=words[len(sent):])
          sent = words
      else:
        getter.cancel()
      if not done and await request.is_disconnected():
        return
    try:
      result = waiting.result()
    except Exception as e:  # noqa: BLE001 (its block failed: this stream ends, the server goes on)
      error_id = uuid.uuid4().hex[:12]
      log.error("request %s (model %s) failed in its block: %s: %s", error_id, model,
                type(e).__name__, e)
      yield _event("error", error={"message": f"transcription failed (error id {error_id}, in "
                                             f"the server's log)", "type": "server_error"})
      return
    if result.error is not None:
      yield _event("error", error={"message": f"file {name}: {result.error}",
                                   "type": "invalid_request_error"})
      return
    on_done()
    if result.text.startswith(sent) and len(result.text) > len(sent):
      yield _event("transcript.text.delta", delta=result.text[len(sent):])
    yield _event("transcript.text.done", text=result.text)
  finally:
    if not ticket.future.done():
      engine.cancel(ticket)


async def _wait(request: Request, engine: Engine, model: str, audio, name: str, limits: Limits):
  """The request's FileResult; None if its client disconnected first (its rows are freed)."""
  try:
    ticket = engine.submit(model, audio, name)
  except QueueFull as e:
    raise HTTPError(503, f"the server is busy: {e}; retry later", headers={"Retry-After": "1"},
                    kind="server_error") from None
  except Stopped as e:
    raise HTTPError(503, str(e), kind="server_error") from None
  waiting = asyncio.wrap_future(ticket.future)
  while True:
    done, _ = await asyncio.wait({waiting}, timeout=limits.poll_seconds)
    if done:
      break
    if await request.is_disconnected():
      engine.cancel(ticket)
      waiting.cancel()
      return None
  try:
    return waiting.result()
  except concurrent.futures.CancelledError:
    return None
  except Exception as e:  # noqa: BLE001 (the batch failed: this request fails, the server goes on)
    error_id = uuid.uuid4().hex[:12]
    log.error("request %s (model %s) failed in its batch: %s: %s", error_id, model,
              type(e).__name__, e)
    raise HTTPError(500, f"transcription failed (error id {error_id}, in the server's log)",
                    kind="server_error") from None
