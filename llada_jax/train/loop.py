"""The training loop behind train.py: data → sharded steps → logs, validation, checkpoints.

Outputs under the work dir:
  metrics.jsonl   one JSON object per logged step: step, loss, grad_norm, lr, tokens (the step's
                  real tokens: `batches.real_tokens`), targets, skipped, the `Throughput` window
                  (tokens_per_s, step_s, data_wait_s, flops_per_step, tflops_per_device, mfu
                  where the device's peak is known), and val_loss / dev_wer / val_s on
                  validation steps
  profile/        a jax.profiler trace of `profile_steps`, if set
  tb/             TensorBoard scalars (train/tensorboard.py)
  checkpoints/    orbax: last `keep_last` + the best by validation loss
  config.json     the resolved TrainConfig
  train.log       the log
"""

from __future__ import annotations

import functools
import json
import logging
import time
import typing as tp
from pathlib import Path

import jax
import numpy as np

from llada_jax.config_files import ConfigError
from llada_jax.data.pipeline import make_batches
from llada_jax.models import checkpoint, features, text
from llada_jax.parallel import distributed, sharding
from llada_jax.train import batches as batches_lib
from llada_jax.train import config as config_lib
from llada_jax.train import export, tensorboard
from llada_jax.train import flops as flops_lib
from llada_jax.train.checkpoints import Checkpoints
from llada_jax.train.config import TrainConfig
from llada_jax.train.state import create_model
from llada_jax.train.step import Trainer, rules_for

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """A step's loss or gradient norm was NaN/inf under nan_policy='stop'."""


def evaluate(trainer: Trainer, state: dict, dev, prepare: tp.Callable[[dict], dict],
             max_batches: int) -> float:
  """Validation loss over the dev set (or its first `max_batches`), with fixed masks."""
  total = count = 0.0
  for i, raw in enumerate(dev):
    if max_batches and i >= max_batches:
      break
    batch = prepare(raw)
    out = jax.device_get(trainer.eval_step(state["params"], trainer.put_batch(batch), i))
    total += float(out["total"])
    count += float(out["count"])
  return total / max(count, 1.0)


_WER_NOTE: list[str] = []


def _decoder(cfg: TrainConfig) -> tp.Callable | None:
  """ids [B, R] from (model, mel, prompt): llada_jax.decoding's diffusion decode (one token per
  step, as the paper) or greedy for the causal baseline; None (noted once) if unavailable."""
  try:
    from llada_jax import decoding  # optional here: training works without it
  except ImportError as e:
    if not _WER_NOTE:
      _WER_NOTE.append(str(e))
      log.info("dev WER skipped: llada_jax.decoding is not importable (%s)", e)
    return None
  r = cfg.data.response_len
  if cfg.objective == "ar":
    return lambda model, mel, prompt: decoding.greedy(model, mel, prompt, max_new_tokens=r)
  settings = decoding.DiffusionSettings(gen_length=r, steps=r, block_length=r)
  return lambda model, mel, prompt: decoding.decode(model, mel, prompt, settings=settings)


@functools.lru_cache(maxsize=None)
def _log_mel(n_mels: int, frames: int) -> tp.Callable[[jax.Array], jax.Array]:
  return jax.jit(functools.partial(features.log_mel, n_mels=n_mels, frames=frames))


def dev_wer(trainer: Trainer, state: dict, dev, maker: batches_lib.BatchMaker, tokenizer,
            examples: int, rows: np.ndarray) -> float | None:
  """WER of the first `examples` dev utterances (in global batch order), decoded on the mesh with
  the current weights. `rows`: the rows of each global batch this host loads. Each host scores
  its own rows; their per-utterance counts are gathered, so every process gets the same WER (and
  the same one as a single process)."""
  cfg = trainer.cfg
  decode = _decoder(cfg)
  if decode is None:
    return None
  from llada_jax.evaluation import wer  # scored as eval.py scores (the authors' calc_wer_json)

  model = trainer.model(state)
  mel = _log_mel(cfg.model.whisper.n_mels, cfg.data.mel_frames)
  # Per row: valid, then wer.utterance_counts' columns (ins, del, sub, reference words).
  shape = (cfg.batch_size, 5)
  counts_at = jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding.batch_sharding(
      trainer.mesh, trainer.rules, shape))
  scored = []
  try:
    for raw in dev:
      batch = maker(raw)
      inputs = trainer.put_batch(batch)
      ids = distributed.to_host(decode(model, mel(inputs["audio"]), inputs["prompt"]))
      local = np.zeros((len(rows), shape[1]), np.int32)
      for i in np.flatnonzero(batch["valid"]):
        hyp = text.decode_response(tokenizer, ids[rows[i]], cfg.model.lm.eos_id)
        local[i] = 1, *wer.utterance_counts([batch["text"][i]], [hyp])[0]
      counts = distributed.to_host(sharding.put_rows(local, counts_at))
      scored.append(counts[counts[:, 0] == 1, 1:])
      if sum(len(c) for c in scored) >= examples:
        break
  except Exception as e:  # a decoder bug must not end a training run
    log.warning("dev WER skipped: decoding failed: %r", e)
    return None
  return wer.CorpusWER.of_counts(np.concatenate(scored)[:examples]).wer


class Throughput:
  """Step time, data wait, tokens/s, FLOPs and MFU, averaged over the steps since the last record.

  Time runs from one step's metrics arriving on the host to the next's (validation and checkpoint
  saves are left out); `data_wait_s` is the part of it the loop spent getting the next batch
  (pipeline, tokenising, host→device), time the device may spend idle."""

  def __init__(self, cfg: TrainConfig, trainer: Trainer):
    self.flops = flops_lib.train_step_flops(cfg, trainer.prompt_len,
                                            from_encoder=trainer.from_encoder)
    self.devices = trainer.mesh.devices.size
    kind = trainer.mesh.devices.flat[0].device_kind
    self.peak = cfg.peak_tflops_per_device or flops_lib.peak_tflops(kind)
    self._reset()
    self.resume()

  def _reset(self) -> None:
    self.steps, self.seconds, self.wait, self.tokens = 0, 0.0, 0.0, 0.0

  def resume(self) -> None:
    self.mark = time.perf_counter()

  def waited(self, seconds: float) -> None:
    self.wait += seconds

  def done(self, tokens: float) -> None:
    now = time.perf_counter()
    self.steps += 1
    self.seconds += now - self.mark
    self.tokens += tokens
    self.mark = now

  def window(self) -> dict:
    steps = max(self.steps, 1)
    step_s = max(self.seconds, 1e-9) / steps
    tflops = self.flops.model / step_s / self.devices / 1e12
    out = {"tokens_per_s": self.tokens / max(self.seconds, 1e-9), "step_s": step_s,
           "data_wait_s": self.wait / steps, "flops_per_step": self.flops.model,
           "tflops_per_device": tflops}
    if self.peak:
      out["mfu"] = tflops / self.peak
    self._reset()
    return out


class _Profile:
  """A jax.profiler trace (XPlane, for TensorBoard's profile plugin / xprof) of steps
  first..last into `folder`, on process 0."""

  def __init__(self, steps: tuple[int, int] | None, folder: Path, main: bool):
    self.first, self.last = steps if steps is not None else (None, None)
    self.folder, self.main, self.active = folder, main, False

  def before(self, n: int) -> None:
    if self.main and not self.active and self.first is not None and self.first <= n <= self.last:
      self.folder.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.folder))
      self.active = True
      log.info("profiling steps %d-%d into %s", n, self.last, self.folder)

  def after(self, n: int) -> None:
    if n == self.last:
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


class _Outputs:
  """metrics.jsonl + TensorBoard, written by process 0 only."""

  def __init__(self, workdir: Path, start: int, enabled: bool):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    if not enabled:
      return
    # After a crash the log may run past the checkpoint we resume from: drop those lines so the
    # file reads as one run.
    if self.path.is_file():
      keep = [ln for ln in self.path.read_text().splitlines()
              if ln.strip() and json.loads(ln).get("step", 0) <= start]
      self.path.write_text("".join(ln + "\n" for ln in keep))
    self.file = open(self.path, "a")
    self.tb = tensorboard.ScalarWriter(workdir / "tb", purge_step=start + 1 if start else None)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    self.file.write(json.dumps(record) + "\n")
    self.file.flush()
    self.tb.add_scalars(record["step"], {
        f"train/{k}" if not k.startswith(("val", "dev")) else f"eval/{k}": v
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.tb.close()


def _log_file(workdir: Path) -> logging.Handler:
  handler = logging.FileHandler(workdir / "train.log")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  logger = logging.getLogger("llada_jax")
  logger.addHandler(handler)
  if logger.level == logging.NOTSET:  # the run's INFO lines belong in train.log whoever calls run()
    logger.setLevel(logging.INFO)
  return handler


def run(cfg: TrainConfig, workdir: str | Path, *, resume: bool = False,
        stop_after: int | None = None, progress: bool = True,
        export_to: str | Path | None = None) -> dict:
  """Train per `cfg` into `workdir`. `stop_after` ends the run after that step (tests of resume).
  `export_to`: at the end, export the best checkpoint (by validation loss; else the last) there
  with the run's model (`export.export_state`; what `export.export_run` would write).

  Returns a summary: last step, loss, val_loss, compile_s, best_step, skipped.
  """
  workdir = Path(workdir)
  shape = config_lib.check_runtime(cfg, jax.device_count(), jax.process_count())
  workdir.mkdir(parents=True, exist_ok=True)
  main = jax.process_index() == 0
  handler = _log_file(workdir) if main else None
  try:
    return _run(cfg, workdir, shape, resume, stop_after, progress and main, main, export_to)
  finally:
    if handler is not None:
      logging.getLogger("llada_jax").removeHandler(handler)
      handler.close()


def _run(cfg, workdir, shape, resume, stop_after, progress, main, export_to) -> dict:
  mesh = sharding.make_mesh(shape)
  rules = rules_for(cfg)
  rows = batches_lib.host_rows(cfg, mesh, rules)
  tokenizer = text.load_tokenizer(config_lib.tokenizer_path(cfg))
  prompt, seq = batches_lib.prompt_ids(cfg, tokenizer)
  ckpts = Checkpoints(workdir / "checkpoints", keep_last=cfg.keep_last, async_save=cfg.async_save)
  try:
    return _loop(cfg, workdir, resume, stop_after, progress, main, mesh, rules, rows, tokenizer,
                 prompt, seq, ckpts, export_to)
  finally:
    ckpts.wait()
    ckpts.close()


def _loop(cfg, workdir, resume, stop_after, progress, main, mesh, rules, rows, tokenizer, prompt,
          seq, ckpts, export_to) -> dict:
  latest = ckpts.latest_step()
  if latest is not None and not resume:
    raise ConfigError(f"{workdir} already holds checkpoints (latest step {latest}): resume "
                      f"that run (resume=True), or give a fresh workdir")
  if main:
    config_lib.save_json(cfg, workdir / "config.json")
  log.info("mesh %s over %d devices (%d hosts); batch %d (this host loads rows %s; %d "
           "micro-batches); sequence %d = %d prompt + %d audio + %d response", dict(mesh.shape),
           jax.device_count(), jax.process_count(), cfg.batch_size, batches_lib.spans(rows),
           cfg.grad_accum, seq, len(prompt), cfg.audio_len, cfg.data.response_len)

  def batches_of(spec: str, train: bool):
    return make_batches(spec, batches_lib.pipeline_config(cfg, train=train, host_rows=len(rows)),
                        data_dir=cfg.data.data_dir, rows=rows, global_batch=cfg.batch_size)

  train_data = batches_of(cfg.data.train, True)
  want_dev = cfg.eval_every > 0 or cfg.data.wer_examples > 0
  dev_data = batches_of(cfg.data.dev, False) if want_dev else None
  for name, data in (("train", train_data), ("dev", dev_data)):
    if data is not None and data.errors:
      log.warning("%s data: %d unusable utterance(s), e.g. %s", name, len(data.errors),
                  data.errors[0])

  t0 = time.perf_counter()
  model = create_model(cfg, mesh, rules)
  trainer = Trainer(cfg, model, mesh, prompt_len=len(prompt), rules=rules,
                    from_encoder=cfg.data.encoder_cache is not None)
  del model
  log.info("model ready in %.1f s: %s trained weights", time.perf_counter() - t0,
           f"{sum(x.size for x in jax.tree.leaves(trainer.abstract_state()['params'])):,}")
  maker = batches_lib.BatchMaker(cfg, tokenizer, prompt)
  prepare: tp.Callable[[dict], dict] = maker
  if cfg.data.encoder_cache is not None:
    cache = batches_lib.EncoderCache(cfg.data.encoder_cache, batches_lib.cache_fingerprint(cfg),
                                     batches_lib.encoder_fn(trainer))
    prepare = lambda raw: cache(maker(raw))  # noqa: E731

  iterator = train_data.iterator()
  start = 0
  if resume and latest is not None:
    state, data_state = ckpts.restore(latest, trainer.abstract_state())
    iterator.set_state(data_state["iterator"])
    start = int(latest)
    log.info("resumed from step %d (%s)", start, ckpts.directory / str(latest))
  else:
    if resume:
      log.info("--resume: no checkpoint in %s yet; starting from step 0", ckpts.directory)
    state = trainer.init_state()
  trainer.release_init()

  compile_s = trainer.compile()
  log.info("compiled the train step in %.1f s", compile_s)
  distributed.barrier("compiled")  # hosts compile at their own pace; the steps start together
  out = _Outputs(workdir, start, main)
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, dynamic_ncols=True, desc="train")

  summary = {"step": start, "loss": None, "val_loss": None, "compile_s": compile_s, "skipped": 0}
  meter = Throughput(cfg, trainer)
  log.info("train step: %.3g model FLOPs (%s)%s", meter.flops.model, meter.flops,
           f"; MFU against {meter.peak:g} TFLOP/s per device" if meter.peak else
           "; no MFU (unknown peak: set peak_tflops_per_device)")
  profile = _Profile(cfg.profile_steps, workdir / "profile", main)

  def finish(n: int, metrics: dict) -> None:
    """Step n is done on the device: its metrics → checks, logs, validation, checkpoint."""
    metrics = {k: v.item() for k, v in jax.device_get(metrics).items()}
    meter.done(metrics["tokens"])
    if not metrics["finite"]:
      if cfg.nan_policy == "stop":
        ckpts.wait()
        raise NonFiniteError(
            f"step {n}: loss {metrics['loss']}, grad norm {metrics['grad_norm']} (nan_policy="
            f"'stop'; the update was not applied and nothing was saved; last checkpoint: "
            f"{ckpts.latest_step()})")
      summary["skipped"] += 1
      log.warning("step %d: non-finite loss %s / grad norm %s: update skipped", n,
                  metrics["loss"], metrics["grad_norm"])
    validate = bool(cfg.eval_every) and (n % cfg.eval_every == 0 or n == cfg.steps)
    record = None
    if validate or n % cfg.log_every == 0 or n == cfg.steps:
      record = {"step": n, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                "lr": metrics["lr"], "tokens": metrics["tokens"], **meter.window(),
                "targets": metrics["targets"], "skipped": summary["skipped"]}
    val_loss = None
    if validate:
      t_eval = time.perf_counter()
      val_loss = evaluate(trainer, state, dev_data, prepare, cfg.data.dev_batches)
      record["val_loss"] = val_loss
      if cfg.data.wer_examples:
        wer = dev_wer(trainer, state, dev_data, maker, tokenizer, cfg.data.wer_examples, rows)
        if wer is not None:
          record["dev_wer"] = wer
      record["val_s"] = time.perf_counter() - t_eval
      meter.resume()  # validation is not step time
      summary["val_loss"] = val_loss
      log.info("step %d: val_loss %.4f%s", n, val_loss,
               f", dev WER {record['dev_wer']:.2%}" if "dev_wer" in record else "")
    if record is not None:
      out.write(record)
      if bar is not None:
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
    if bar is not None:
      bar.update(1)
    summary.update(step=n, loss=metrics["loss"])
    if n % cfg.save_every == 0 or n == cfg.steps:
      ckpts.save(n, state, {"iterator": iterator.get_state(), "step": n}, val_loss)
      meter.resume()  # nor is saving

  def needs_state(n: int) -> bool:
    """Step n's end reads the state (validation, a save, the end) or the profile stops: it is
    finished before step n + 1 is dispatched (the state is donated to that step)."""
    return (bool(cfg.eval_every) and n % cfg.eval_every == 0) or n % cfg.save_every == 0 or (
        n == cfg.steps or (stop_after is not None and n >= stop_after) or profile.last == n)

  # Step n's metrics are fetched after step n + 1 is dispatched, so the host's device_get never
  # leaves the device idle; steps whose end needs the state are finished at once.
  pending = None
  meter.resume()
  try:
    for n in range(start + 1, cfg.steps + 1):
      profile.before(n)
      t_data = time.perf_counter()
      batch = trainer.put_batch(prepare(next(iterator)))
      meter.waited(time.perf_counter() - t_data)
      state, metrics = trainer.train_step(state, batch)
      if pending is not None:
        finish(*pending)
      pending = (n, metrics)
      if needs_state(n):
        pending = None
        finish(n, metrics)
        profile.after(n)
        if stop_after is not None and n >= stop_after:
          break
    if pending is not None:  # not reached: the last step needs the state
      finish(*pending)
    ckpts.wait()
    summary["best_step"] = ckpts.best_step()
    if export_to is not None:
      step = summary["best_step"] or ckpts.latest_step()
      if step is None:
        raise checkpoint.CheckpointError(f"{workdir}: no training checkpoint to export")
      if step != summary["step"]:  # else `state` is that step's
        state, _ = ckpts.restore(step, trainer.abstract_state())
      export.export_state(trainer, state, export_to, workdir=workdir, step=step)
    return summary
  finally:
    profile.close()
    if bar is not None:
      bar.close()
    out.close()
