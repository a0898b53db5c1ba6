"""Block-boundary scheduling (`decoding.slots`): utterances that join a running batch as others
finish get, token for token, what `LLaDATranscriber.transcribe` (whole batches through
`decoding.decode`) gives them, whatever slot or neighbours they had; and the same through the
server's engine (`--schedule block`), beside a model it schedules by batch."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from llada_jax.data.audio import load_audio
from llada_jax.data.librispeech import scan_librispeech
from llada_jax.decoding import DiffusionSettings
from llada_jax.decoding.slots import SlotDecoder
from llada_jax.inference.batch import AudioBatch
from llada_jax.inference.cascade import Cascade
from llada_jax.inference.llada import LLaDASettings, LLaDATranscriber
from llada_jax.models import features, text
from llada_jax.serve.engine import Engine


@pytest.fixture(scope="module")
def utterances(eval_checkpoints):
  utts = scan_librispeech(eval_checkpoints["data"]).utterances
  return [(u.id, load_audio(u.path)) for u in utts]


def transcribe_in_batches(tr, utterances, b):
  samples, texts = tr.mel_frames * features.HOP, {}
  for s in range(0, len(utterances), b):
    rows = utterances[s: s + b]
    x = np.zeros((b, samples), np.float32)
    for j, (_, a) in enumerate(rows):
      x[j, : len(a)] = a[:samples]
    pad = b - len(rows)
    batch = AudioBatch(audio=x, audio_len=np.asarray([len(a) for _, a in rows] + [0] * pad),
                       valid=np.asarray([True] * len(rows) + [False] * pad),
                       ids=[i for i, _ in rows] + [""] * pad,
                       index=np.arange(s, s + b) * np.asarray([1] * len(rows) + [0] * pad))
    for (utt, _), (txt, err) in zip(rows, tr.transcribe(batch)):
      assert err is None
      texts[utt] = txt
  return texts


# At temperature 0.7 the tiny random LLaDA commits EOS in different blocks (and proposes its own
# mask token, which a later block must fill, as `decode` does); at 0 it runs every block.
@pytest.mark.parametrize("settings, mixed", [
    (DiffusionSettings(gen_length=16, steps=16, block_length=4), False),
    (DiffusionSettings(gen_length=16, steps=8, block_length=4, remasking="random",
                       temperature=0.7), True),
], ids=["low_confidence", "random_t0.7"])
def test_rows_joining_at_block_boundaries_get_the_batch_decoders_tokens(
    eval_checkpoints, utterances, settings, mixed):
  tr = LLaDATranscriber(eval_checkpoints["models"]["llada"], LLaDASettings(decoding=settings),
                        batch_size=4)
  want = transcribe_in_batches(tr, utterances, 4)
  slots = SlotDecoder(tr._graphdef, tr._state, tr.config, tr.prompt, settings, rows=2,
                      mel_frames=tr.mel_frames, seed=tr.settings.seed)
  seeds = [zlib.crc32(i.encode()) & 0x7FFFFFFF for i, _ in utterances]
  done = list(slots.run((i, a, s) for (i, a), s in zip(utterances, seeds)))
  assert sorted(f.id for f in done) == sorted(want)
  eos = tr.config.lm.eos_id
  got = {f.id: text.decode_response(tr.tokenizer, f.tokens, eos) for f in done}
  assert got == want
  # 10 utterances through 2 slots: slots were handed on; with mixed block counts (an EOS in an
  # early block frees the slot) some rows joined while others were mid-way.
  assert slots.advances < sum(f.blocks for f in done)
  assert (len({f.blocks for f in done}) > 1) == mixed, [f.blocks for f in done]


def test_cached_or_threshold_settings_are_refused(eval_checkpoints):
  tr = LLaDATranscriber(eval_checkpoints["models"]["llada"],
                        LLaDASettings(decoding=DiffusionSettings(gen_length=16, steps=16,
                                                                 block_length=4)), batch_size=2)
  for bad, field in ((dict(cache=True), "cache"), (dict(threshold=0.9), "threshold")):
    s = DiffusionSettings(gen_length=16, steps=16, block_length=4, **bad)
    with pytest.raises(ValueError, match=field):
      SlotDecoder(tr._graphdef, tr._state, tr.config, tr.prompt, s, rows=2,
                  mel_frames=tr.mel_frames)


def test_engine_block_turns_answer_as_its_batches_do(eval_checkpoints, utterances):
  """One engine serves the same transcriber twice: "slots" block-scheduled, "batch" by whole
  batches. Ten requests to each at once: every file gets the same text from both (turns
  alternate, neither model starves), in windows keyed by content as the server keys them."""
  settings = DiffusionSettings(gen_length=16, steps=8, block_length=4, remasking="random",
                               temperature=0.7)
  tr = LLaDATranscriber(eval_checkpoints["models"]["llada"], LLaDASettings(decoding=settings),
                        batch_size=2)
  engine = Engine({"slots": Cascade(tr), "batch": Cascade(tr)}, max_wait_ms=5,
                  slots={"slots": tr.slot_decoder()})
  engine.start()
  try:
    tickets = [(utt, name, engine.submit(name, a, utt)) for utt, a in utterances
               for name in ("slots", "batch")]
    texts = {(utt, name): t.future.result(timeout=300).text for utt, name, t in tickets}
  finally:
    engine.stop(timeout=60)
  for utt, _ in utterances:
    assert texts[(utt, "slots")] == texts[(utt, "batch")], utt
  assert len(set(texts.values())) > 1
  with pytest.raises(ValueError, match="deliberation"):
    Engine({"c": Cascade(tr)}, slots={"x": tr.slot_decoder()})
