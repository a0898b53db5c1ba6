"""Batch invariance: an utterance's text does not depend on the batch it is decoded in — alone
(batch 1), among other neighbours with padding rows (batch 3: the 10 utterances run as 3+3+3+1,
the last batch two padding rows) and in the batch of 8 that test_eval_mesh compares across meshes
— for Whisper, the AR baseline and every Whisper-LLaDA strategy (diffusion, semi-AR, threshold
with the prefix cache, the dual cache, both deliberation strategies).

Each row's random streams (random masking, remasking, Gumbel noise) are keyed by its utterance id
and its own count of forwards, and a row that finished waits without changing, so only float
rounding could differ between batch shapes: the tiny models' weights are scaled for peaked
distributions (support.SCALE), so the texts must be identical. One device, so the rows of a batch
are one matmul (the case where a row's neighbours share every reduction)."""

import pytest
from support import BATCH, RUNS, assert_same_hyps, read_hyps

pytestmark = pytest.mark.slow


def _hyps(eval_run, run: str, batch: int) -> list[dict]:
  rows = read_hyps(eval_run(run, "--mesh", "1,1,1", "--batch-size", str(batch)))
  return sorted(rows, key=lambda r: r["id"])


@pytest.mark.parametrize("run", list(RUNS))
def test_texts_do_not_depend_on_the_batch(eval_run, run):
  want = _hyps(eval_run, run, BATCH)
  assert len({r["hyp"] for r in want}) > 1, "outputs differ between utterances"
  for batch in (1, 3):
    assert_same_hyps(_hyps(eval_run, run, batch), want, f"{run}, batch {batch} vs {BATCH}")
