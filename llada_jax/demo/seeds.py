"""The demo over several training seeds (`tools/demo.py --seeds 0 1 2`): each finding's value
and paired-bootstrap 95 % interval per seed, and whether it holds for every seed.

One training run per code version cannot tell a finding from a lucky seed: the demo's trained
models move by several WER points between seeds (and between CPU types, docs/training.md), so a
claim of the README must survive all of them. Each seed's run is a whole demo in OUT/seed<N>
(its results.json and eval/ folders); this module only reads them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llada_jax.demo import report, significance
from llada_jax.evaluation.outputs import write_atomic


@dataclasses.dataclass(frozen=True)
class Finding:
  name: str
  claim: str  # what "holds" means: `system` makes fewer errors than `versus`
  system: str
  versus: str


def findings(ratios: tuple[float, ...]) -> tuple[Finding, ...]:
  """The demo's findings, each a paired comparison of two of its systems (`ratios`: the mask
  ratios the runs swept, 0.3 included)."""
  out = [
      Finding("llada_vs_llama", "the Whisper-LLaDA (diffusion) beats the Whisper-LLaMA it was "
              "adapted from", "diffusion", "llama_ar"),
      Finding("semi_ar_vs_llama", "… and with semi-AR decoding", "semi_ar", "llama_ar"),
      Finding("deliberation_semi_ar", "deliberation over tiny.en (semi-AR, the paper's default) "
              "beats the cut first pass", "deliberation_semi_ar", "whisper_cut"),
  ]
  out += [Finding(f"deliberation_{r}", f"… diffusion, random masking at {r}",
                  f"deliberation_diffusion_random_ratio{r}", "whisper_cut") for r in ratios]
  out += [Finding(f"audio_vs_text_only_{r}", f"audio-conditioned deliberation over tiny.en beats "
                  f"text-only at {r}", f"deliberation_diffusion_random_ratio{r}",
                  f"deliberation_text_only_ratio{r}") for r in ratios]
  out += [Finding("cascade_semi_ar", "the paper's cascade: deliberation over the Whisper-LLaMA "
                  "(semi-AR) beats it", "cascade_semi_ar_audio", "llama_ar")]
  out += [Finding(f"cascade_{r}", f"… diffusion, random masking at {r}",
                  f"cascade_diffusion_audio_ratio{r}", "llama_ar") for r in ratios]
  out += [Finding("cascade_audio_vs_text_only", "the cascade (semi-AR) beats its text-only twin",
                  "cascade_semi_ar_audio", "cascade_semi_ar_text_only")]
  return tuple(out)


def verdict(cells: list[dict]) -> str:
  """`holds` (every seed's interval above 0), `reversed` (every one below), `same sign` (every
  seed's change on one side, not all significant), `no seed significant` (every interval holds
  0, the changes of mixed sign or none) or `depends on the seed` (significant in some seeds
  only, or with opposite signs)."""
  if all(c["ci95"][0] > 0 for c in cells):
    return "holds"
  if all(c["ci95"][1] < 0 for c in cells):
    return "reversed"
  gains = [c["relative_gain"] for c in cells]
  if all(g > 0 for g in gains) or all(g < 0 for g in gains):
    return "same sign"
  if all(c["ci95"][0] <= 0 <= c["ci95"][1] for c in cells):
    return "no seed significant"
  return "depends on the seed"


def summarize(root: Path, seeds: list[int]) -> dict:
  """Read OUT/seed<N>/results.json and eval/ of every seed, write OUT/seeds.json and
  OUT/seeds.md (the table) and return the summary. A seed without a readable results.json is a
  ValueError naming the file."""
  runs = {}
  for seed in seeds:
    out = root / f"seed{seed}"
    try:
      systems = json.loads((out / "results.json").read_text())["systems"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"{out / 'results.json'}: {e}") from None
    runs[seed] = (systems, report.rescore(out, systems))
  ratios = sorted({v["mask_ratio"] for systems, _ in runs.values() for v in systems.values()
                   if v.get("mask_ratio") is not None})
  rows = []
  for f in findings(tuple(ratios)):
    if not all(f.system in errors and f.versus in errors for _, errors in runs.values()):
      continue
    cells = [significance.paired_bootstrap(errors[f.versus], errors[f.system])
             for _, errors in runs.values()]
    rows.append({**dataclasses.asdict(f), "seeds": dict(zip(seeds, cells)),
                 "verdict": verdict(cells)})
  wers = {name: {seed: systems[name]["wer"] for seed, (systems, _) in runs.items()}
          for name in ("whisper_cut", "llama_ar", "diffusion", "semi_ar",
                       "deliberation_semi_ar", "cascade_semi_ar_audio")
          if all(name in systems for systems, _ in runs.values())}
  summary = {"seeds": seeds, "wer": wers, "findings": rows}
  write_atomic(root / "seeds.json", json.dumps(summary, indent=1) + "\n")
  write_atomic(root / "seeds.md", table(summary) + "\n")
  return summary


def _pct(x: float) -> str:
  return f"{100 * x:+.1f}"


def table(summary: dict) -> str:
  seeds = summary["seeds"]
  head = " | ".join(f"seed {s}" for s in seeds)
  lines = [f"| system | {head} |", "|---|" + "---|" * len(seeds)]
  for name, per_seed in summary["wer"].items():
    lines.append(f"| {name} WER % | " + " | ".join(f"{100 * per_seed[s]:.2f}" for s in seeds)
                 + " |")
  lines += ["", f"| finding (relative WER reduction [95 % CI]) | {head} | verdict |",
            "|---|" + "---|" * (len(seeds) + 1)]
  for row in summary["findings"]:
    cells = [row["seeds"][s] for s in seeds]
    lines.append(f"| {row['claim']} | " + " | ".join(
        f"{_pct(c['relative_gain'])} % [{_pct(c['ci95'][0])}, {_pct(c['ci95'][1])}]"
        for c in cells) + f" | {row['verdict']} |")
  return "\n".join(lines)
