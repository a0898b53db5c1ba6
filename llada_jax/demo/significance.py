"""Is a WER change real? Paired bootstrap over utterances (Bisani & Ney, ICASSP 2004).

On a test set of tens of utterances one utterance can carry a whole "gain" (a first-pass repetition
loop that a second pass happens to cut, say); resampling utterances shows how much of it would
survive another draw of the test set.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(base: np.ndarray, other: np.ndarray, *, samples: int = 2000,
                     seed: int = 0) -> dict:
  """`other`'s relative WER reduction vs `base` from per-utterance error counts of the same
  utterances (`wer.utterance_errors(...)`): both systems share the references, so the ratio of
  WERs is the ratio of summed errors.

  Returns relative_gain = 1 − Σother / Σbase, its 95 % percentile interval over `samples`
  resamples of the utterances (with replacement, the same draw for both systems), p_better (the
  share of resamples where `other` has fewer errors) and how many utterances got better / worse.
  """
  base, other = np.asarray(base, np.float64), np.asarray(other, np.float64)
  if base.shape != other.shape or base.ndim != 1 or base.size == 0:
    raise ValueError(f"paired_bootstrap: expected two equal 1-D error counts, got {base.shape} "
                     f"and {other.shape}")
  total = base.sum()
  idx = np.random.default_rng(seed).integers(0, base.size, (samples, base.size))
  b, o = base[idx].sum(axis=1), other[idx].sum(axis=1)
  # A resample without a single base error has no relative change to speak of: it counts as 0.
  gains = np.where(b > 0, 1.0 - o / np.maximum(b, 1e-12), 0.0)
  lo, hi = np.percentile(gains, [2.5, 97.5])
  return {"relative_gain": float(1.0 - other.sum() / total) if total else 0.0,
          "ci95": [float(lo), float(hi)], "p_better": float(np.mean(o < b)),
          "improved": int(np.sum(other < base)), "worsened": int(np.sum(other > base))}
