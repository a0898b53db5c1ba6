"""Whole-batch vs block-boundary (iteration-level) scheduling of semi-AR decoding, same run.

  python benchmarks/bench_block_scheduling.py --checkpoint runs/demo/train_llada/model \
      --data runs/demo/corpus/test-clean [--batch-size 8] [--limit 100] [--repeat 2]

Both decode the same utterances, in the same order, with the checkpoint's semi-AR settings
(`--gen-length`/`--steps`/`--block-length`, default the checkpoint's response length in blocks
of 8, one step per token), all utterances waiting at the start (an offline queue):

  batch   `LLaDATranscriber.transcribe` on consecutive groups of `--batch-size` (what `llada-jax
          serve` and eval do): each group runs until its slowest row is done.
  slots   `decoding.slots.SlotDecoder` with `--batch-size` slots: after every block the rows that
          are done leave and waiting utterances take their slots.

Prints wall time, utterances/s, mean and p90 latency from the start, rows × blocks run (idle
slots included) and whether every transcript is identical. Mixed audio lengths are the point: on
one batch the rows' responses end in different blocks.

With `--concurrency N`, then also served: `llada-jax serve --schedule batch` and `--schedule
block` (`--max-batch` = `--batch-size`, `--max-wait-ms 10`) as loopback subprocesses, one after
the other, N closed-loop clients sending the utterances until each was answered once:
requests/s, mean and p90 latency, and whether both servers gave the offline texts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--data", required=True, help="a LibriSpeech-layout split folder")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--limit", type=int, default=100)
  ap.add_argument("--gen-length", type=int)
  ap.add_argument("--steps", type=int)
  ap.add_argument("--block-length", type=int, default=8)
  ap.add_argument("--repeat", type=int, default=2, help="timed passes of each (best kept)")
  ap.add_argument("--concurrency", type=int, help="also measure both schedules served (above)")
  ap.add_argument("--out", help="write the results as JSON here")
  args = ap.parse_args(argv)

  from llada_jax.data.audio import load_audio
  from llada_jax.data.librispeech import scan_librispeech
  from llada_jax.decoding import DiffusionSettings
  from llada_jax.decoding.slots import SlotDecoder
  from llada_jax.inference.batch import AudioBatch
  from llada_jax.inference.llada import LLaDASettings, LLaDATranscriber
  from llada_jax.models import checkpoint as ckpt
  from llada_jax.models import features, text

  gen = args.gen_length or int(ckpt.read_source_info(args.checkpoint).get("response_len", 128))
  settings = DiffusionSettings(gen_length=gen, steps=args.steps or gen,
                               block_length=args.block_length)
  b = args.batch_size
  tr = LLaDATranscriber(args.checkpoint, LLaDASettings(decoding=settings), batch_size=b)
  samples = tr.mel_frames * features.HOP
  utts = scan_librispeech(args.data).utterances[: args.limit]
  audio = [load_audio(u.path)[:samples] for u in utts]
  ids = [u.id for u in utts]
  seeds = [zlib.crc32(i.encode()) & 0x7FFFFFFF for i in ids]
  eos = tr.config.lm.eos_id

  def batch_of(rows: list[int]) -> AudioBatch:
    n = len(rows)
    x = np.zeros((b, samples), np.float32)
    for j, i in enumerate(rows):
      x[j, : len(audio[i])] = audio[i]
    pad = b - n
    return AudioBatch(audio=x, audio_len=np.asarray([len(audio[i]) for i in rows] + [0] * pad,
                                                    np.int32),
                      valid=np.asarray([True] * n + [False] * pad), ids=[ids[i] for i in rows] +
                      [""] * pad, index=np.asarray(rows + [-1] * pad, np.int64))

  def by_batch():
    texts, done = {}, {}
    t0 = time.perf_counter()
    for s in range(0, len(utts), b):
      rows = list(range(s, min(s + b, len(utts))))
      results = tr.transcribe(batch_of(rows))
      now = time.perf_counter() - t0
      for i, (txt, _) in zip(rows, results):
        texts[ids[i]], done[ids[i]] = txt, now
    return time.perf_counter() - t0, texts, done

  graphdef, state = tr._graphdef, tr._state
  slots = SlotDecoder(graphdef, state, tr.config, tr.prompt, settings, rows=b,
                      mel_frames=tr.mel_frames, seed=tr.settings.seed)

  def by_slots():
    texts, done = {}, {}
    t0 = time.perf_counter()
    for f in slots.run(zip(ids, audio, seeds)):
      texts[f.id] = text.decode_response(tr.tokenizer, f.tokens, eos)
      done[f.id] = f.finished_s
      blocks[f.id] = f.blocks
    return time.perf_counter() - t0, texts, done

  blocks: dict[str, int] = {}

  # compile both before timing
  tr.transcribe(batch_of(list(range(min(b, len(utts))))))
  slots.warm_up()

  rows = {}
  for name, fn in (("batch", by_batch), ("slots", by_slots)):
    best = None
    for _ in range(args.repeat):
      wall, texts, done = fn()
      if best is None or wall < best[0]:
        best = (wall, texts, done)
    rows[name] = best
  same = rows["batch"][1] == rows["slots"][1]
  diff = [i for i in ids if rows["batch"][1][i] != rows["slots"][1][i]]
  table = ["| scheduling | utts | wall s | utts/s | mean latency s | p90 latency s | "
           "row-blocks run |", "|---|---|---|---|---|---|---|"]
  out = {"checkpoint": args.checkpoint, "utts": len(utts), "batch_size": b,
         "settings": str(settings), "identical_texts": same, "differing": diff[:10]}
  # rows × blocks run, idle rows included: a batch runs as many blocks as its slowest row
  batch_blocks = sum(b * max(blocks[i] for i in ids[s: s + b]) for s in range(0, len(ids), b))
  for name, (wall, _, done) in rows.items():
    lat = sorted(done.values())
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    rb = batch_blocks if name == "batch" else slots.advances * b
    table.append(f"| {name} | {len(utts)} | {wall:.2f} | {len(utts) / wall:.2f} | "
                 f"{statistics.mean(lat):.2f} | {p90:.2f} | {rb} |")
    out[name] = {"wall_s": round(wall, 3), "utts_per_s": round(len(utts) / wall, 3),
                 "mean_latency_s": round(statistics.mean(lat), 3), "p90_latency_s": round(p90, 3),
                 "row_blocks": rb}
  out["speedup"] = round(rows["batch"][0] / rows["slots"][0], 3)
  print("\n".join(table))
  print(f"slots / batch throughput: {out['speedup']:.2f}×; identical transcripts: {same}"
        + ("" if same else f" (differ: {diff[:5]})"))
  if args.concurrency:
    want = {u.path: rows["batch"][1][u.id] for u in utts}
    served = ["| served | concurrency | requests/s | mean latency s | p90 latency s | "
              "offline texts |", "|---|---|---|---|---|---|"]
    for schedule in ("batch", "block"):
      rate, lat, texts = serve(args, gen, schedule, [u.path for u in utts])
      ok = texts == want
      same = same and ok
      lat.sort()
      p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
      served.append(f"| {schedule} | {args.concurrency} | {rate:.2f} | "
                    f"{statistics.mean(lat):.2f} | {p90:.2f} | {'identical' if ok else 'DIFFER'} |")
      out[f"serve_{schedule}"] = {"requests_per_s": round(rate, 3),
                                  "mean_latency_s": round(statistics.mean(lat), 3),
                                  "p90_latency_s": round(p90, 3), "identical_texts": ok}
    print("\n".join(served))
  if args.out:
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
  return 0 if same else 1


def serve(args, gen: int, schedule: str, paths: list[str]):
  """One loopback server with `schedule`, `--concurrency` closed-loop clients over `paths`
  (each sent once) → (requests/s, latencies, {path: text})."""
  import concurrent.futures
  import threading

  import requests

  sys.path.insert(0, str(ROOT / "benchmarks"))
  from bench_serve import Server

  argv = ["--model", f"m={args.checkpoint}", "--strategy", "semi_ar", "--gen-length", str(gen),
          "--steps", str(args.steps or gen), "--block-length", str(args.block_length),
          "--max-batch", str(args.batch_size), "--max-wait-ms", "10", "--schedule", schedule]
  server = Server(argv, Path(args.out or "bench").with_suffix(f".{schedule}.log"))
  lock, todo, lat, texts = threading.Lock(), list(reversed(paths)), [], {}

  def client(_):
    while True:
      with lock:
        if not todo:
          return
        path = todo.pop()
      t0 = time.perf_counter()
      with open(path, "rb") as fh:
        r = requests.post(server.url + "/v1/audio/transcriptions", data={"model": "m"},
                          files={"file": (Path(path).name, fh)}, timeout=600)
      r.raise_for_status()
      with lock:
        lat.append(time.perf_counter() - t0)
        texts[path] = r.json()["text"]

  try:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
      list(pool.map(client, range(args.concurrency)))
    rate = len(paths) / (time.perf_counter() - start)
  finally:
    server.stop()
  return rate, lat, texts


if __name__ == "__main__":
  sys.exit(main())
