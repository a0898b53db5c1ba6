"""Training checkpoints: orbax `CheckpointManager`, async saves, last k + best by validation loss.

    DIR/checkpoints/<step>/state/   trained weights, optimizer state, step, RNG key (orbax pytree)
    DIR/checkpoints/<step>/data/    the data iterator's state (JSON)
    DIR/checkpoints/<step>/metrics/ {"val_loss": …} when a validation ran at that step

Frozen weights are not saved: they are rebuilt from the config (init checkpoints, or the seed).

Orbax writes each step into `<step>.orbax-checkpoint-tmp-*` and renames it into place only once
every item is written (and every host is done), so a process killed mid-save leaves at most a tmp
folder that is never listed as a step; the next manager removes it in the background (done before
its first save).
"""

from __future__ import annotations

import logging
import math
import os
import typing as tp
from pathlib import Path

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)

VAL_LOSS = "val_loss"


class Checkpoints:
  def __init__(self, directory: str | os.PathLike, *, keep_last: int, async_save: bool = True):
    self.directory = Path(directory).absolute()
    # Steps saved without a validation carry {} (not None: orbax warns on every such save) and
    # rank last.
    score = lambda m: m.get(VAL_LOSS, math.inf)  # noqa: E731
    keep = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep_last),
        policies.BestN(get_metric_fn=score, reverse=True, n=1),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=score, best_mode="min", preservation_policy=keep,
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest validation loss (None if no step has one)."""
    best = self.manager.best_step()
    if best is None:
      return None
    metrics = self.manager.metrics(best) or {}
    return best if VAL_LOSS in metrics else None

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: tp.Any, data_state: dict, val_loss: float | None = None) -> None:
    """Starts an async save; the arrays are copied off the device before this returns, so the
    caller may donate `state` to the next step at once."""
    metrics = {} if val_loss is None else {VAL_LOSS: float(val_loss)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: tp.Any) -> tuple[tp.Any, dict]:
    """State restored straight into the shardings of `abstract_state` (ShapeDtypeStructs)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
