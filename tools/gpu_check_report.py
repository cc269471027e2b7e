"""The figures of a GPU check (tools/gpu_check.sh), read from its output folder: the tests'
outcome (from the JUnit XML), tokens/s of the medium-preset runs with each method's ratio to
EP-CAMEx in the same check, and the Hugging Face fine-tune's first and last loss. Prints markdown
to stdout; a part that did not run shows "not run"."""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _metrics(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tests(out: Path) -> list[str]:
    xml = out / "gpu-tests.xml"
    if not xml.exists():
        return ["- GPU tests: not run"]
    suite = ET.parse(xml).getroot()
    node = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if node is None:
        return ["- GPU tests: unreadable report"]
    a = {k: int(node.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    passed = a["tests"] - a["failures"] - a["errors"] - a["skipped"]
    return [f"- GPU tests: {passed} passed, {a['failures']} failed, {a['errors']} errors, "
            f"{a['skipped']} skipped"]


def _throughput(out: Path) -> list[str]:
    rows: dict[str, float] = {}
    for m in ("smoe", "ep-camex", "namex-full-mom"):
        recs = [r for r in _metrics(out / f"train-{m}") if "tokens_per_s" in r]
        if len(recs) > 1:  # the first interval holds compilation and warm-up
            rows[m] = statistics.median(float(r["tokens_per_s"]) for r in recs[1:])
        elif recs:
            rows[m] = float(recs[0]["tokens_per_s"])
    if not rows:
        return ["", "Training throughput: not run."]
    ref = rows.get("ep-camex")
    lines = ["", "| method (bf16) | tokens/s (median over log intervals) | × EP-CAMEx |",
             "|---|---|---|"]
    for m, v in rows.items():
        ratio = f"{v / ref:.2f}" if ref else "—"
        lines.append(f"| {m} | {v:.0f} | {ratio} |")
    return lines


def _hf(out: Path) -> list[str]:
    recs = [r for r in _metrics(out / "hf") if "loss" in r]
    if not recs:
        return ["", "Hugging Face fine-tune: not run."]
    return ["", f"Hugging Face fine-tune (tiny Qwen2-MoE, NAMEx-Full-Mom): loss "
                f"{float(recs[0]['loss']):.4f} at step {recs[0].get('step')} → "
                f"{float(recs[-1]['loss']):.4f} at step {recs[-1].get('step')}."]


def main(out: Path) -> None:
    print("\n".join(["", *_tests(out), *_throughput(out), *_hf(out)]))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
