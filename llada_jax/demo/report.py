"""The demo's report: every system scored on the same utterances, its change vs its first pass with
a paired-bootstrap 95 % interval, the paper's findings, a table and plots (OUT/results.json).

`results` maps a system name to {wer, rtf, steps, …}; its hypotheses are OUT/eval/NAME/hyps.jsonl
(aliases such as `diffusion_steps24` share another system's folder). A system names its first pass
in `first_pass` (default: `whisper_cut`, the Whisper first pass as deliberation receives it).
"""

from __future__ import annotations

import json
from pathlib import Path

from llada_jax.demo import significance
from llada_jax.evaluation import wer
from llada_jax.evaluation.outputs import write_atomic


def finish(out: Path, results: dict, report: dict, gen_length: int) -> None:
  """Score, write OUT/results.json and the plots, print the table and the findings."""
  # Every system is scored on the same utterances: those every system transcribed (error records
  # differ between systems; with --too-long error the Whisper-LLaDA ones refuse audio longer than
  # their mel_frames).
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
  if cascade:
    best_cascade = min((results[k]["wer"], k) for k in cascade)[1]
    report["findings"]["cascade"] = {
        "first_pass": "llama_ar", "first_pass_wer": results["llama_ar"]["wer"],
        "best": best_cascade, **results[best_cascade]["vs_first_pass"],
        "audio_vs_text_only": {
            k: significance.paired_bootstrap(errors[k.replace("_audio", "_text_only")],
                                             errors[k]) for k in cascade}}
  report["plots"] = plots(out, results, gen_length)
  write_json(out / "results.json", report)
  print(table(results))
  f = report["findings"]
  pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
  print(f"\nbest audio-conditioned deliberation ({f['best_deliberation']}): "
        f"{pct(f['deliberation_relative_gain'])} relative WER vs the first pass cut to "
        f"{gen_length} tokens, 95 % CI [{pct(f['deliberation_gain_ci95'][0])}, "
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


def rescore(out: Path, results: dict, first_pass: str = "whisper_cut") -> dict:
  """Every system's WER on the utterances all of them transcribed, and its change vs its first
  pass (`first_pass` unless the system names its own) with a paired-bootstrap 95 % interval
  (`vs_first_pass`); returns the per-utterance errors."""
  # aliases (e.g. diffusion_steps32) share another system's run: each run is read and scored once
  folder_of = {name: name if (out / "eval" / name).is_dir() else _alias_of(name, results)
               for name in results}
  runs = {}
  for folder in set(folder_of.values()):
    rows = map(json.loads, (out / "eval" / folder / "hyps.jsonl").read_text().splitlines())
    runs[folder] = {r["id"]: (r["ref"], r["hyp"]) for r in rows
                    if "hyp" in r and "error" not in r}
  ids = sorted(set.intersection(*(set(h) for h in runs.values())))
  counts = {folder: wer.utterance_counts([h[i][0] for i in ids], [h[i][1] for i in ids])
            for folder, h in runs.items()}  # [N, 4] ins, del, sub, reference words
  errors = {}
  for name, v in results.items():
    c = counts[folder_of[name]]
    v["wer"] = wer.CorpusWER.of_counts(c).wer
    v["num_scored"] = len(ids)
    errors[name] = wer.utterance_errors(c)
  for name in results:  # the paper's cascade rows: vs the Whisper-LLaMA they deliberate over
    base = results[name].get("first_pass", first_pass)
    results[name]["vs_first_pass"] = significance.paired_bootstrap(errors[base], errors[name])
  return errors


def _alias_of(name: str, results: dict) -> str:
  if name.startswith("diffusion_steps"):
    return "diffusion"
  return "deliberation_diffusion_random"


def table(results: dict) -> str:
  rows = ["| system | WER % | first pass | rel. vs first pass [95 % CI] | utts better / worse | "
          "RTF | steps |", "|---|---|---|---|---|---|---|"]
  for name, v in results.items():
    c = v["vs_first_pass"]
    rel = (f"{100 * c['relative_gain']:+.1f} % [{100 * c['ci95'][0]:+.1f}, "
           f"{100 * c['ci95'][1]:+.1f}]")
    rows.append(f"| {name} | {100 * v['wer']:.2f} | {v.get('first_pass', 'whisper_cut')} | {rel} | "
                f"{c['improved']} / {c['worsened']} | "
                f"{v['rtf']:.3f} | {v['steps'] if v['steps'] is not None else '-'} |")
  return "\n".join(rows)


def plots(out: Path, results: dict, gen_length: int) -> list[str]:
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
  pts = sorted((v["steps"], v["wer"]) for k, v in results.items()
               if k.startswith("diffusion_steps"))
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
             label=f"first pass (cut to {gen_length} tokens)")
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


def write_json(path: Path, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2))  # a reader never sees half a results.json
