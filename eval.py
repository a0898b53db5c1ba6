#!/usr/bin/env python3
"""Transcribe a LibriSpeech-layout folder or a tfds split and score it (WER, RTF).

    python eval.py --checkpoint DIR --data SPEC --out OUTDIR --strategy NAME
                   [--batch-size N] [--limit N] [--strict] [--tfds-data-dir DIR]

SPEC is a LibriSpeech-layout split folder (SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + transcripts)
or tfds:NAME/SPLIT (e.g. tfds:librispeech_folder/test_clean, prepared with
`llada_jax.data.tfds_librispeech.prepare`). Writes OUTDIR/hyps.jsonl (one line per utterance: id,
ref, hyp, per-token confidences where the strategy has them, or an `error`) and OUTDIR/summary.json
(wer, rtf, num_utts, num_errors, audio/decode/compile/wall seconds, the arguments), each atomically,
and prints a one-row table. WER: Whisper's EnglishTextNormalizer on both sides, then jiwer.

Strategies (llada_jax/evaluation.py: STRATEGIES; a strategy has prepare(checkpoint, args) and
transcribe(batch) -> [(hyp, confidences or None)]):
  whisper   greedy Whisper (JAX, KV cache, one jitted while_loop per batch shape) of a converted
            Whisper checkpoint; prompt <|startoftranscript|><|notimestamps|> for English-only
            models, <|startoftranscript|><|en|><|transcribe|><|notimestamps|> for multilingual ones
            (ids from the checkpoint's tokenizer.json); Whisper's suppress_tokens unless
            --no-suppress; confidences = softmax probability of each greedy token.

Timing. Batches have a fixed size (the last one padded with masked rows) and a few fixed audio
widths, so each (batch, width) compiles once; each compiled shape is logged. Compile time is timed
apart (ahead-of-time compilation, or a warm-up call per new shape for strategies that do not time
their own) and reported as compile_seconds; RTF = decode seconds on warm shapes / audio seconds.

Encoder input (whisper). Whisper was trained on log-mels of audio padded to 30 s (3000 frames), and
`--full-30s` does exactly that: its transcripts match transformers' WhisperForConditionalGeneration
with WhisperFeatureExtractor. By default, for speed on CPU, utterances are bucketed by length
(--bucket-seconds, default 5 10 20 30) and a bucket of s seconds feeds the encoder only s·100 frames
(the first frames of the 30 s log-mel, `features.num_frames`): 2–4× less encoder and cross-attention
work (with tiny.en on 2 CPU cores, 3.8× PyTorch's utterances/s at batch 16 instead of 1.1×). The
encoder then attends over less padding than in training, which changes transcripts: on 50 espeak-ng
utterances with tiny.en, 31 hypotheses differ in some word from the 30 s ones, at a similar corpus
WER (29.3 % bucketed, 30.7 % at 30 s). Use --full-30s for numbers comparable with published Whisper
results; summary.json's strategy_info.encoder_input says which was used.

Long audio (whisper). Audio over 30 s is cut into 30 s windows overlapping by 2 × --chunk-stride
(default 5 s each side, a new window every 20 s, as whisper-jax chunks), each window is transcribed
(always with 30 s input) and consecutive transcripts are merged at the overlap: the best word
alignment of the two windows (transformers' chunk-merge, on words), keeping the half of the overlap
away from each window's cut edge. Merged hypotheses carry no confidences. The Whisper-LLaDA
strategies follow the paper, which encodes one 30 s window: longer utterances get an error record
(`evaluation.check_max_duration`), never a silent cut.

Bad data. Corrupt, empty, zero-sample or non-audio files, missing transcript lines, duplicate ids
and unreadable folders each become an error record in hyps.jsonl (counted in summary.num_errors);
stereo, any sample rate and 8/16/24-bit PCM are converted to 16 kHz mono and transcribed. --strict
stops at the first problem instead. A broken SPEC (no such folder, no utterances, unprepared tfds
dataset) or checkpoint exits with status 2 and a message.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llada_jax import evaluation  # noqa: E402

if __name__ == "__main__":
  sys.exit(evaluation.main(description=__doc__))
