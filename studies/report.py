"""Write the reproduction-study report (markdown on stdout, plot to results/reproduction.png)
from the `namex compare` summaries under runs/ produced by studies/reproduction.sh.

Seeds fix both the initialisation and the batch order, so methods are compared per seed as well
(paired differences, mean ± 95% Student t CI via namex_ref.train.mean_ci).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from namex_ref.train import MethodSummary, mean_ci
from namex_ref.train.comparison import plot_compare

RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs")
# docs/math.md §5: WikiText-103 test perplexity of the paper's medium models
STUDY1_HEADING = "## Study 1: nine methods, 400 steps"
PAPER = {"smoe": 35.55, "camex": 36.53, "namex-full-mom": 35.37}


def load(name: str) -> dict[str, dict[int, float]]:
    summary = json.loads((RUNS / name / "summary.json").read_text())
    return {m["method"]: dict(zip(m["seeds"], m["ppl"], strict=True)) for m in summary["methods"]}


def fmt(values: list[float]) -> str:
    mean, ci = mean_ci(values)
    return f"{mean:.2f} ± {ci:.2f}" if math.isfinite(ci) else f"{mean:.2f}"


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    seeds = sorted(set(a) & set(b))
    return fmt([a[s] - b[s] for s in seeds]) + f" (n = {len(seeds)})"


def kept_summary(path: Path) -> str:
    """Everything of the current report from the study2 summary block (studies/study2/summary.py
    writes it) to this study's heading, the hand-written reading of the summary included, so
    that regenerating this report keeps it; the bare markers when there is none yet."""
    start, end = "<!-- study2-summary:start -->", "<!-- study2-summary:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    i, j = text.find(start), text.find(f"\n{STUDY1_HEADING}")
    return text[i:j].rstrip() + "\n" if 0 <= i < j else f"{start}\n{end}\n"


def main() -> None:
    main_runs = load("repro")
    main_runs.update(load("repro-extra"))
    main_runs["namex-full"] = load("abl-nomom")["namex-full"]
    cfg = json.loads((RUNS / "repro" / "summary.json").read_text())["base_config"]
    print("# Reproduction study (tiny preset, built-in corpus)\n")
    print(kept_summary(Path("results") / "reproduction.md"))
    print(f"{STUDY1_HEADING}\n")
    print(
        f"Produced by `studies/reproduction.sh` + `studies/report.py`. Preset `{cfg['preset']}`, "
        f"{cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']}, one CPU thread per "
        "run; validation perplexity on the whole validation split; 95% Student t intervals "
        "over seeds. NAMEx-Mom and NAMEx-Q come from the `repro-extra` runs and NAMEx-Full from "
        "the ablation's β = 0 runs (same settings and seeds). A seed fixes the initialisation "
        "and the batch order, so the paired "
        "column (method − SMoE, per seed) removes the seed's own difficulty.\n"
    )
    summaries = []
    for m, v in main_runs.items():
        seeds = tuple(sorted(v))
        mean, ci = mean_ci([v[k] for k in seeds])
        summaries.append(MethodSummary(m, seeds, tuple(v[k] for k in seeds), mean, ci, math.nan))
    summaries.sort(key=lambda x: x.mean)
    plot_compare(summaries, Path("results") / "reproduction.png")
    print("| method | valid ppl (mean ± 95% CI) | − SMoE, paired | − EP-CAMEx, paired | per seed |")
    print("|---|---:|---:|---:|---|")
    order = sorted(main_runs, key=lambda m: sum(main_runs[m].values()) / len(main_runs[m]))
    for m in order:
        v = main_runs[m]
        seeds = sorted(v)
        print(
            f"| {m} | {fmt([v[s] for s in seeds])} | {paired(v, main_runs['smoe'])} | "
            f"{paired(v, main_runs['ep-camex'])} | {', '.join(f'{v[s]:.1f}' for s in seeds)} |"
        )
    print("\nPaper (docs/math.md §5, WikiText-103 test ppl, medium model): " + ", ".join(
        f"{k} {v}" for k, v in PAPER.items()) + ".\n")
    print("## Momentum phase ablation (NAMEx-Full-Mom, |β| = 0.5, γ = 1)\n")
    print("| φ | valid ppl (mean ± 95% CI) | − (φ = π/6), paired | − (φ = 0), paired | per seed |")
    print("|---|---:|---:|---:|---|")
    ref = main_runs["namex-full-mom"]
    real = load("abl-phi0")["namex-full-mom"]
    rows = [
        ("no momentum (β = 0, NAMEx-Full)", load("abl-nomom")["namex-full"]),
        ("0 (real β)", real),
        ("π/12", load("abl-phi15")["namex-full-mom"]),
        ("π/6 (default; main study)", ref),
    ]
    for label, v in rows:
        seeds = sorted(v)
        print(
            f"| {label} | {fmt([v[s] for s in seeds])} | {paired(v, ref)} | {paired(v, real)} | "
            f"{', '.join(f'{v[s]:.1f}' for s in seeds)} |"
        )
    minus = load("abl-phim15")["namex-full-mom"]
    plus = load("abl-phi15")["namex-full-mom"]
    same = all(minus[s] == plus[s] for s in minus)
    print(
        f"\nφ = −π/12 (seed 0): {minus[0]:.6f} vs +π/12: {plus[0]:.6f} — "
        + ("bit-identical, as the conjugate symmetry predicts (±φ are one experiment)."
           if same else "DIFFERENT (unexpected: check the conjugate symmetry).")
    )


if __name__ == "__main__":
    main()
