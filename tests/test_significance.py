"""Paired bootstrap of a WER change: against a plain loop of the published procedure."""

import numpy as np
import pytest

from llada_jax.demo.significance import paired_bootstrap


def reference(base, other, samples, seed):
  """Bisani & Ney's paired bootstrap, one resample at a time."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(base), (samples, len(base)))
  gains, better = [], 0
  for row in idx:
    b = sum(base[i] for i in row)
    o = sum(other[i] for i in row)
    gains.append(1 - o / b if b else 0.0)
    better += o < b
  return np.percentile(gains, [2.5, 97.5]), better / samples


def test_matches_the_loop_and_counts():
  rng = np.random.default_rng(3)
  base = rng.integers(0, 8, 40)
  other = np.maximum(base - rng.integers(-2, 4, 40), 0)
  got = paired_bootstrap(base, other, samples=500, seed=7)
  ci, p = reference(base.tolist(), other.tolist(), 500, 7)
  np.testing.assert_allclose(got["ci95"], ci, rtol=1e-12)
  assert got["p_better"] == pytest.approx(p)
  assert got["relative_gain"] == pytest.approx(1 - other.sum() / base.sum())
  assert got["improved"] == int((other < base).sum())
  assert got["worsened"] == int((other > base).sum())


def test_a_gain_carried_by_one_utterance_is_not_significant():
  """60 utterances, equal but for one loop of 20 insertions that the second system cuts: a 12 %
  "gain" whose interval reaches 0 (resamples without that utterance see none)."""
  base = np.full(60, 2)
  base[17] = 22
  other = base.copy()
  other[17] = 2
  got = paired_bootstrap(base, other)
  assert got["relative_gain"] == pytest.approx(20 / 140)
  assert got["ci95"][0] == 0.0 and got["improved"] == 1 and got["worsened"] == 0
  # The same total gain spread over every utterance is significant.
  spread = paired_bootstrap(np.full(60, 7), np.full(60, 6))
  assert spread["ci95"][0] > 0.1 and spread["p_better"] == 1.0


def test_rejects_unpaired_counts():
  with pytest.raises(ValueError, match="equal 1-D"):
    paired_bootstrap(np.ones(3), np.ones(4))
