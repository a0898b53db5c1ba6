#!/usr/bin/env python3
"""Transcribe a LibriSpeech-layout folder, a Diffusion-ASR data file, a tfds split or any audio
files and score it (WER, RTF).

    python eval.py --checkpoint DIR --data SPEC --out OUTDIR --strategy NAME
                   [--batch-size N | --per-device-batch N] [--mesh DATA,FSDP,TENSOR]
                   [--dtype {auto,float32,bfloat16,float16}]
                   [--attention {xla,dot_product,cudnn,splash,auto}] [--limit N] [--strict]
                   [--tfds-data-dir DIR] [--predictions-json FILE] [--too-long {trim,error}]

SPEC is a LibriSpeech-layout split folder (SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + transcripts),
one of Diffusion-ASR's JSON data files (FILE.json: {"annotation": [{"path", "text", "task",
"origin_transcripts"?}, …]}, read in its order, ids = file stems, STEM@INDEX where two paths share
a stem), tfds:NAME/SPLIT (e.g. tfds:librispeech_folder/test_clean, prepared with
`llada_jax.data.tfds_librispeech.prepare`), or audio files in any layout and format (wav, flac, ogg,
mp3, m4a, …: libsndfile, else FFmpeg through PyAV; 16 kHz mono): a glob pattern (quoted), a list of
paths (LIST.txt one per line, LIST.jsonl {"path", "text"?} per line; ids as listed) or a folder
without LibriSpeech transcripts (every audio file below it; ids = paths relative to it). The rule
for a folder: LibriSpeech layout if a *.trans.txt lies below it, else audio files. Audio without a
transcript gets ref null in hyps.jsonl and is left out of the WER (null when none has one;
summary.json counts them in num_unreferenced).

Writes OUTDIR/hyps.jsonl (one line per utterance: id, ref, hyp, per-token confidences where the
strategy has them, or an `error`) and OUTDIR/summary.json (wer with its ins/del/sub/ref_words, rtf,
num_utts, num_errors, truncated_utts, audio/decode/compile/wall seconds, the arguments), each
atomically, and prints a one-row table.
--predictions-json FILE also writes, atomically, the list Diffusion-ASR's inference.py writes
([{"path", "text", "llada_prediction", "origin_transcripts" for deliberation}], in data order;
error records are left out), which their calc_wer_json.py reads.

WER as their calc_wer_json.py scores it: special tokens and spaces before punctuation removed, then
Whisper's EnglishTextNormalizer with its British→American spelling table on both sides, then word
alignment (jiwer; the same totals as their kaldialign). Empty references are skipped.

Strategies (each a `llada_jax.inference` Transcriber with typed settings):
  whisper       greedy Whisper (KV cache, one compiled while_loop per batch shape) of a converted
                Whisper checkpoint; prompt <|startoftranscript|><|notimestamps|> for English-only
                models, <|startoftranscript|><|en|><|transcribe|><|notimestamps|> for multilingual
                ones; Whisper's suppress_tokens unless --no-suppress; confidences = softmax
                probability of each greedy token. Every utterance is padded to 30 s, as Whisper
                was trained (--bucketed: shorter encoder input per length bucket, faster on a CPU
                but less accurate on short audio).
  ar            Whisper-LLaMA greedy decoding (KV cache).
  diffusion     Whisper-LLaDA: one block of --gen-length masks, --steps denoising steps.
  semi_ar       the same in blocks of --block-length, left to right.
  deliberation  re-fill part of --first-pass hyps.jsonl (another run's output; with a JSON data
                file and no --first-pass: its origin_transcripts) with the LLaDA:
                --deliberation-strategy semi_ar (sub-blocks) or diffusion (--masking random or
                low_confidence, --mask-ratio); --text-only drops the audio (the paper's ablation).
Fast-dLLM options (not in the paper): --threshold, --cache, --dual-cache.

Timing. Batches have a fixed size (the last one padded with masked rows) and a few fixed audio
widths, so each (batch, width) compiles once, ahead of time, and is logged; compile time is
reported apart (compile_seconds) and RTF = decode seconds on compiled shapes / audio seconds.

Devices. --mesh DATA,FSDP,TENSOR runs the model on a mesh of devices (one size may be -1 for the
remaining devices: --mesh=-1,1,1). The weights are placed by a training sharding preset (--sharding
full_fsdp: the model dimension over fsdp, heads / MLP / vocabulary over tensor; lora_dp: whole on
every data-parallel device, split over tensor only, so no weight is gathered; or replicated), each
restored straight into its shards, and every batch is split over data × fsdp. Default: one device
(1,1,1); with several processes, every device on the data axis. --batch-size is rows per step over
the whole mesh (default 16); --per-device-batch N makes it N × data × fsdp instead, so (8,1,1)
processes 8× the rows per step of (1,1,1). LoRA adapters are folded into their kernels once at load
(--no-merge-lora decodes with them as trained; the same up to float rounding). --dtype is the
model's compute dtype (weights keep theirs): auto = bfloat16 on GPU/TPU, the checkpoint's own
(float32) on CPU. --attention picks the attention kernel (default: the checkpoint's, xla):
dot_product (jax.nn.dot_product_attention), cudnn (flash attention; GPU at bfloat16/float16),
splash (TPU), auto (cudnn on GPU at half precision, splash on TPU, else xla); a kernel the backend
lacks exits 2. Transcripts do not depend on the mesh (tests/test_eval_mesh.py).

Several processes (one per host, or several on one machine): run the same command in each with
JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0…N-1 (or
LLADA_DISTRIBUTED=1 where JAX detects the cluster itself: TPU pod slices, SLURM, Open MPI). The
mesh spans every process's devices. Each process reads the data spec, restores its own shards of
the weights, feeds its own batch / N rows of every batch (padding rows where it has none left, so
all run the same steps) and process 0 writes the one hyps.jsonl and summary.json, as a single
process would. A batch not divisible by N, or a mesh that does not fit the devices or does not give
each process its own rows (data × fsdp must split the batch at least N ways), exits 2 on every
process before anything compiles. With --strict a bad file stops its own process: the others then
wait for it in a collective until JAX's coordination service gives up on it (or they are killed).

Long audio. Whisper cuts audio over 30 s into 30 s windows overlapping by 2 × --chunk-stride
(5 s each side, a new window every 20 s, as whisper-jax chunks) and merges consecutive transcripts
at their best word alignment. The Whisper-LLaDA strategies encode one window (--mel-frames / 100 s,
30 s by default) and, as the authors' inference.py does (audio[:sr*30]), cut longer audio to it;
summary.json counts those in truncated_utts and hyps.jsonl marks them (truncated_from_seconds).
--too-long error makes each an error record instead.

Bad data. Corrupt, empty, zero-sample or non-audio files, missing transcript lines, duplicate ids
and unreadable folders (a JSON data file: entries with a missing or non-audio file, an empty text,
a repeated path or id, each named by annotation[INDEX] and its path; a list of paths: a missing
or repeated path, a JSONL line without one, each named by LIST:LINE) each become an error record in
hyps.jsonl (counted in summary.num_errors);
stereo, any sample rate and 8/16/24-bit PCM are converted to 16 kHz mono and transcribed. --strict
stops at the first problem instead. A broken SPEC (no such folder, no utterances, unprepared tfds
dataset, a glob pattern without matches) or checkpoint exits with status 2 and a message.
"""

import sys

from llada_jax.cli import eval as cli

if __name__ == "__main__":
  sys.exit(cli.main(description=__doc__))
