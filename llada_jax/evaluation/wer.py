"""Word error rate as Diffusion-ASR scores it (their `calc_wer_json.py`).

Both sides pass through `normalize`: their `remove_sp` (drop `<|…|>` special tokens, collapse
whitespace, remove the space before `!,.?;:`, strip the left edge), then Whisper's
`EnglishTextNormalizer` *with* its British→American spelling table (`whisper-normalizer`'s
`normalizers/english.json`, the file their repository vendors), so "colour"/"color" is no error.
`remove_sp` matters before the normaliser: "1 ,000 dollars" normalises to "one $0", "1,000 dollars"
to "$1000".

Words are aligned by jiwer (rapidfuzz's Levenshtein, unit costs); they use kaldialign
(`sclite_mode=False`, also unit costs). Both find the same minimum edit distance, so each
utterance's total errors and the corpus WER are identical. Where several alignments reach that
minimum the two may pick different ones: with I − D fixed (= hyp words − ref words) and S + I + D
fixed, the only freedom is two substitutions against one insertion plus one deletion ("a b" → "b a"
is S 2 or I 1 + D 1). So `ins`/`del`/`sub` can differ from theirs by such pairs, never the sum
(on random 1–7-word strings over 5 words ~8 % of pairs split differently; real transcripts with
few errors far fewer).

Empty references (after normalising) are left out, utterance and words, as this project always did;
their script would count every hypothesis word of one as an insertion (kaldialign against an empty
sequence). LibriSpeech has no empty references.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as tp

import numpy as np

_SPECIAL = re.compile(r"<\|.*?\|>")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r" ?([!,.?;:])")

# Columns of `utterance_counts`.
INS, DEL, SUB, REF_WORDS = range(4)


def remove_special(text: str) -> str:
  """Their `remove_sp`: special tokens out, whitespace collapsed, no space before `!,.?;:`."""
  text = _SPACES.sub(" ", _SPECIAL.sub(" ", text))
  return _SPACE_BEFORE_PUNCT.sub(r"\1", text).lstrip(" ")


@functools.lru_cache(maxsize=1)
def _english():
  from whisper_normalizer.english import EnglishTextNormalizer

  return EnglishTextNormalizer()  # loads the package's english.json spelling table


def normalize(text: str) -> str:
  """A transcript as it is scored: `remove_special`, then Whisper's EnglishTextNormalizer."""
  return _english()(remove_special(text))


def utterance_counts(refs: tp.Sequence[str], hyps: tp.Sequence[str]) -> np.ndarray:
  """Per utterance [N, 4] int64: insertions, deletions, substitutions, reference words (columns
  INS, DEL, SUB, REF_WORDS), after `normalize`; all zero for an empty reference."""
  import jiwer

  if len(refs) != len(hyps):
    raise ValueError(f"utterance_counts: {len(refs)} references, {len(hyps)} hypotheses")
  out = np.zeros((len(refs), 4), np.int64)
  for i, (ref, hyp) in enumerate(zip(refs, hyps)):
    r, h = normalize(ref).split(), normalize(hyp).split()
    if not r:
      continue  # see the module docstring
    if not h:
      out[i] = 0, len(r), 0, len(r)
      continue
    m = jiwer.process_words(" ".join(r), " ".join(h))
    out[i] = m.insertions, m.deletions, m.substitutions, len(r)
  return out


def utterance_errors(counts: np.ndarray) -> np.ndarray:
  """Errors per utterance (insertions + deletions + substitutions) of `utterance_counts`."""
  return np.asarray(counts)[:, [INS, DEL, SUB]].sum(axis=1)


@dataclasses.dataclass(frozen=True)
class CorpusWER:
  """Summed counts over the scored utterances (those with a non-empty reference)."""

  ins: int
  deletions: int
  sub: int
  ref_words: int
  scored_utts: int

  @classmethod
  def of_counts(cls, counts: np.ndarray) -> CorpusWER:
    c = np.asarray(counts, np.int64).reshape(-1, 4)
    return cls(ins=int(c[:, INS].sum()), deletions=int(c[:, DEL].sum()), sub=int(c[:, SUB].sum()),
               ref_words=int(c[:, REF_WORDS].sum()), scored_utts=int((c[:, REF_WORDS] > 0).sum()))

  @property
  def errors(self) -> int:
    return self.ins + self.deletions + self.sub

  @property
  def wer(self) -> float:
    """(ins + del + sub) / reference words; 0 when nothing was scored (their script's rule)."""
    return self.errors / self.ref_words if self.ref_words else 0.0

  def summary(self) -> dict[str, float | int]:
    """The fields of a run's summary.json."""
    return {"wer": self.wer, "ins": self.ins, "del": self.deletions, "sub": self.sub,
            "ref_words": self.ref_words}


def corpus_wer(refs: tp.Sequence[str], hyps: tp.Sequence[str]) -> CorpusWER:
  return CorpusWER.of_counts(utterance_counts(refs, hyps))


def wer(refs: tp.Sequence[str], hyps: tp.Sequence[str]) -> float:
  """Corpus WER, (ins + del + sub) / reference words, as the authors score it."""
  return corpus_wer(refs, hyps).wer
