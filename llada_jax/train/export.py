"""A training run → a self-contained checkpoint that `llada_jax.load` and eval.py read.

Training checkpoints hold only the trained weights (frozen ones are rebuilt from the config's init
paths); the export writes the whole model — frozen encoder and LM, trained Q-Former and LoRA — with
the run's data settings (mel frames, response length) in source.json, so evaluation rebuilds the
exact input shapes the model was trained on.

`export_run` rebuilds the model from a run folder; `export_state` writes one already in memory
(train.py's end of run). On several processes every process calls them (the restore and the
gathers of sharded weights are collectives) and process 0 writes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
from flax import nnx

from llada_jax.convert.source import TOKENIZER_FILE_NAMES
from llada_jax.models import checkpoint, stacked, text
from llada_jax.parallel import distributed, sharding
from llada_jax.train import batches
from llada_jax.train import config as config_lib
from llada_jax.train.checkpoints import Checkpoints
from llada_jax.train.state import create_model
from llada_jax.train.step import Trainer, rules_for

log = logging.getLogger(__name__)


def export_run(workdir: str | Path, out: str | Path, *, step: int | None = None,
               overwrite: bool = True) -> Path:
  """Write the best (by validation loss; else the latest) or the given step of a run to `out`."""
  workdir = Path(workdir)
  cfg = config_lib.load(str(workdir / "config.json"))
  ckpts = Checkpoints(workdir / "checkpoints", keep_last=cfg.keep_last, async_save=False)
  try:
    step = step if step is not None else (ckpts.best_step() or ckpts.latest_step())
    if step is None:
      raise checkpoint.CheckpointError(f"{workdir}: no training checkpoint to export")
    mesh = sharding.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
    rules = rules_for(cfg)
    prompt, _ = batches.prompt_ids(cfg, text.load_tokenizer(config_lib.tokenizer_path(cfg)))
    trainer = Trainer(cfg, create_model(cfg, mesh, rules), mesh, prompt_len=len(prompt),
                      rules=rules, from_encoder=False)
    state, _ = ckpts.restore(step, trainer.abstract_state())
  finally:
    ckpts.close()
  return export_state(trainer, state, out, workdir=workdir, step=step, overwrite=overwrite)


def export_state(trainer: Trainer, state: dict, out: str | Path, *, workdir: str | Path,
                 step: int, overwrite: bool = True) -> Path:
  """`trainer`'s model with the trained weights of `state` (training step `step` of the run in
  `workdir`) → `out`. Every process calls it; process 0 writes."""
  cfg = trainer.cfg
  model = trainer.model(state)
  tokenizer_dir = Path(config_lib.tokenizer_path(cfg))
  distributed.barrier("export")  # the gathers below are collectives: start them together

  def items():
    # On several processes the sharded weights are gathered to every host, a chunk at a time.
    # Layer stacks are written one entry per layer, as converted checkpoints hold them.
    return distributed.to_host_all(
        stacked.per_layer_items(nnx.state(model, nnx.Not(checkpoint.RNG_STATE))))

  def tokenizer(folder: Path) -> None:
    for file in tokenizer_dir.iterdir():
      if file.is_file() and file.name in TOKENIZER_FILE_NAMES:
        shutil.copy2(file, folder / file.name)

  info = {"format": "trained", "workdir": str(Path(workdir).absolute()), "step": int(step),
          "objective": cfg.objective, "mel_frames": cfg.data.mel_frames,
          "response_len": cfg.data.response_len, "text_form": cfg.data.text_form}
  if jax.process_index() == 0:
    checkpoint.save(out, cfg.resolved_model(), items(), source_info=info, tokenizer=tokenizer,
                    overwrite=overwrite)
    log.info("exported %s step %d → %s", workdir, step, out)
  else:
    for _ in items():  # the same gathers as process 0, which writes
      pass
  distributed.barrier("exported")  # nobody returns before `out` is complete
  return Path(out)
