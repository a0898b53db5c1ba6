"""WER as Diffusion-ASR's calc_wer_json.py scores it: remove_sp, Whisper's EnglishTextNormalizer
with the spelling table, word alignment with an insertion / deletion / substitution breakdown."""

import numpy as np
import pytest

from llada_jax.evaluation import wer


def test_spelling_variants_are_no_errors():
  refs = ["THE COLOUR OF THE TRAVELLING THEATRE", "she apologised to the neighbours"]
  hyps = ["the color of the traveling theater", "She apologized to the neighbors."]
  assert wer.utterance_counts(refs, hyps)[:, :3].sum() == 0
  assert wer.wer(refs, hyps) == 0.0


def test_special_tokens_and_spaces_before_punctuation():
  assert wer.remove_special("<|en|><|transcribe|>  Hello ,  world !  OK ;yes") == \
      "Hello, world! OK;yes"
  assert wer.normalize("<|en|> Hello , world <|endoftext|>") == "hello world"
  # The space before a comma changes what the normaliser reads: 1,000 is a number, "1 ,000" not.
  assert wer.normalize("1 ,000 dollars") == wer.normalize("1,000 dollars") == "$1000"
  assert wer.wer(["one thousand dollars"], ["<|en|> 1 ,000 dollars"]) == 0.0


def test_breakdown_matches_a_hand_count():
  # fox → box (sub), "the" before lazy missing (del), "today" added (ins): one minimal alignment.
  c = wer.utterance_counts(["the quick brown fox jumps over the lazy dog"],
                           ["the quick brown box jumps over lazy dog today"])
  assert c.tolist() == [[1, 1, 1, 9]]
  score = wer.corpus_wer(["the quick brown fox jumps over the lazy dog", "a b c d"],
                         ["the quick brown box jumps over lazy dog today", "a c d"])
  assert (score.ins, score.deletions, score.sub, score.ref_words) == (1, 2, 1, 13)
  assert score.summary() == {"wer": 4 / 13, "ins": 1, "del": 2, "sub": 1, "ref_words": 13}


def test_corpus_wer_is_summed_errors_over_reference_words():
  refs = ["the cat sat", "a b c d", "hello there", "", "uh", "Mr. Smith's colour", "a b"]
  hyps = ["the bat sat down", "a c d", "", "noise", "words", "mister smith's color", "b a"]
  c = wer.utterance_counts(refs, hyps)
  # Empty references (also "uh", which the normaliser removes) are left out: no words, no errors.
  assert c[3].tolist() == [0, 0, 0, 0] and c[4].tolist() == [0, 0, 0, 0]
  assert c[2].tolist() == [0, 2, 0, 2]  # an empty hypothesis: every reference word deleted
  assert wer.utterance_errors(c).tolist() == [2, 1, 2, 0, 0, 0, 2]
  score = wer.CorpusWER.of_counts(c)
  assert score.scored_utts == 5 and score.ref_words == 3 + 4 + 2 + 4 + 2  # "mister smith is"
  assert score.wer == pytest.approx((score.ins + score.deletions + score.sub) / score.ref_words)
  assert score.wer == pytest.approx(wer.utterance_errors(c).sum() / c[:, wer.REF_WORDS].sum())
  assert wer.wer(refs, hyps) == score.wer
  assert wer.wer([], []) == 0.0 and wer.utterance_counts([], []).shape == (0, 4)
  with pytest.raises(ValueError, match="2 references, 1 hypotheses"):
    wer.utterance_counts(["a", "b"], ["a"])


def test_ties_keep_the_total():
  """Swapped words: two substitutions or one insertion + one deletion cost the same; any aligner
  (jiwer here, kaldialign in their script) reports 2 errors."""
  c = wer.utterance_counts(["a b"], ["b a"])
  assert wer.utterance_errors(c).tolist() == [2]
  assert c[0, wer.INS] - c[0, wer.DEL] == 0
  assert np.all(c >= 0)
