"""The summary of the study: which of the paper's claims reproduce, at which scale, each effect
against its 95 % interval, from the finished runs only (no number is typed here except the
paper's, which are quoted from docs/math.md §5).

A verdict is a rule, not a judgement: a paired difference whose interval excludes 0 names the
better method; one whose interval contains 0 is "not separated" ("equal on every seed" when every
paired difference is exactly 0); a cell with fewer than two
paired seeds has no interval and says so. :func:`insert_block` writes the summary between two
markers of another file (the top of ``results/reproduction.md``, the README's reproduction
section), so that the file's own text around it stays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from namex_ref.benchmarks.common import NOT_MEASURED_GPU
from studies.study2.knobs import PRETRAIN_SKIP
from studies.study2.stats import Cell, Estimate, markdown, paired

PAPER_PPL = {"smoe": 35.55, "camex": 36.53, "namex-full-mom": 35.37}
"""WikiText-103 test perplexity of the paper's medium models (docs/math.md §5)."""
PAPER_GLUE = {"SST-2": (95.06, 93.69), "MRPC": (93.27, 91.01), "CoLA": (60.13, 58.29),
              "RTE": (78.15, 75.81), "MNLI": (87.45, 86.94)}
"""GLUE (T5-base, 8 experts): (NAMEx-Full-Mom, EP-CAMEx) per task (docs/math.md §5)."""
START, END = "<!-- study2-summary:start -->", "<!-- study2-summary:end -->"

Cells = Callable[[str, str, str], dict[str, Cell]]
"""(group, setting, metric) -> tag -> seed -> value (report.cells bound to the runs)."""


@dataclass(frozen=True)
class Claim:
    """One row of the headline table: ``a − b`` in ``metric`` of one group and setting."""

    claim: str
    paper: str
    where: str
    group: str
    setting: str
    metric: str
    a: str
    b: str
    lower_is_better: bool


def verdict(e: Estimate, a: str, b: str, *, lower_is_better: bool) -> str:
    """The rule of the module docstring for the paired difference ``e`` = a − b."""
    if e.n == 0:
        return "not run yet"
    if not math.isfinite(e.ci):
        return f"n = {e.n}: no interval"
    if e.mean == 0 and e.ci == 0:
        return "equal on every seed"
    lo, hi = e.mean - e.ci, e.mean + e.ci
    if (hi < 0) if lower_is_better else (lo > 0):
        return f"**{a} better**"
    if (lo > 0) if lower_is_better else (hi < 0):
        return f"**{b} better**"
    return "not separated"


def _paper_ppl(a: str, b: str) -> str:
    if a in PAPER_PPL and b in PAPER_PPL:
        return f"{PAPER_PPL[a] - PAPER_PPL[b]:+.2f} ppl (medium, WikiText-103)"
    return "—"


def _paper_glue() -> str:
    diffs = [x - y for x, y in PAPER_GLUE.values()]
    return f"{min(diffs):+.2f} to {max(diffs):+.2f} points (GLUE, T5-base)"


PRETRAIN_PAIRS = (("namex-full-mom", "smoe"), ("namex-full-mom", "ep-camex"),
                  ("namex-full-mom", "camex"), ("ep-camex", "camex"))
LONG_GROUP = "finetune-long"
"""The runs fine-tuned from the longest pre-training (studies.study2.plan, stage 8)."""
FINETUNE_PAIRS = (("namex-full-mom", "ep-camex"), ("namex-full-mom", "smoe"),
                  ("namex", "ep-camex"), ("ep-camex", "camex"))


def claims(lengths: Sequence[str]) -> list[Claim]:
    """The headline claims: pre-training per length, then fine-tuning per metric."""
    rows = []
    for a, b in PRETRAIN_PAIRS:
        for steps in lengths:
            rows.append(Claim(f"pre-training: {a} ≤ {b}", _paper_ppl(a, b),
                              f"tiny, {steps} steps", "length", steps, "ppl", a, b, True))
    for a, b in FINETUNE_PAIRS:
        paper = _paper_glue() if (a, b) == FINETUNE_PAIRS[0] else "—"
        for metric, name in (("acc", "accuracy"), ("f1", "macro-F1")):
            rows.append(Claim(f"fine-tuning {name}: {a} ≥ {b}", paper,
                              "tiny, upcycled, 6 classes", "finetune", "", metric, a, b, False))
    return rows


def _cell(cells: Cells, c: Claim) -> str:
    cs = cells(c.group, c.setting, c.metric)
    e = paired(cs.get(c.a, {}), cs.get(c.b, {}))
    if e.n == 0:
        return "not run yet"
    if not math.isfinite(e.ci):
        return f"{e.text()}, no interval"
    return f"{e.text()}: {verdict(e, c.a, c.b, lower_is_better=c.lower_is_better)}"


def headline(cells: Cells, lengths: Sequence[str]) -> str:
    """Two tables: pre-training (a claim per row, a length per column) and fine-tuning (a
    claim per row, accuracy and macro-F1), each cell the paired a − b and its verdict."""
    by = {(c.a, c.b, c.setting or c.metric): c for c in claims(lengths)}
    pre = [[f"{a} ≤ {b}", _paper_ppl(a, b)] + [_cell(cells, by[a, b, s]) for s in lengths]
           for a, b in PRETRAIN_PAIRS]
    ft = [[f"{a} ≥ {b}", by[a, b, "acc"].paper] + [_cell(cells, by[a, b, m])
                                                   for m in ("acc", "f1")]
          for a, b in FINETUNE_PAIRS]
    return ("Pre-training (tiny preset; validation perplexity, a − b paired by seed, 95 %; "
            "negative = a better):\n\n"
            + markdown(["claim (a − b)", "paper"] + [f"{s} steps" for s in lengths], pre)
            + f"\nMedium preset, the paper's scale (GPU): {NOT_MEASURED_GPU}; "
            "`GPU_CHECK_FULL=1 make gpu-check` runs SMoE, EP-CAMEx, CAMEx and NAMEx-Full-Mom "
            "there for 2,000 bf16 steps.\n"
            + "\nFine-tuning (upcycled from one pre-trained SMoE, 6-class held-out passages; "
            "points, a − b paired by seed, 95 %; positive = a better):\n\n"
            + markdown(["claim (a − b)", "paper", "accuracy", "macro-F1"], ft))


def long_finetune(cells: Cells, steps: str) -> str:
    """The fine-tuning claims again, fine-tuned from the longest pre-training (plan stage 8),
    accuracy and macro-F1 with verdicts; empty when no such run has finished."""
    if not any(cells(LONG_GROUP, "", "acc").values()):
        return ""
    rows = []
    for a, b in FINETUNE_PAIRS[:2]:
        row = [f"{a} ≥ {b}"]
        for metric in ("acc", "f1"):
            c = Claim("", "", "", LONG_GROUP, "", metric, a, b, False)
            row.append(_cell(cells, c))
        rows.append(row)
    return (f"\nThe same fine-tuning from the {steps}-step SMoE (a stronger pre-trained model; "
            "points, a − b paired by seed, 95 %):\n\n"
            + markdown(["claim (a − b)", "accuracy", "macro-F1"], rows))


def smoe_lead(cells: Cells, lengths: Sequence[str], methods: Sequence[str]) -> str:
    """SMoE's lead per length, in perplexity and relative to SMoE's own perplexity."""
    rows = []
    for steps in lengths:
        cs = cells("length", steps, "ppl")
        smoe = cs.get("smoe", {})
        if not smoe:
            continue
        row = [steps, f"{sum(smoe.values()) / len(smoe):.2f} (n = {len(smoe)})"]
        for m in methods:
            e = paired(cs.get(m, {}), smoe)
            rel = e.mean / (sum(smoe.values()) / len(smoe)) * 100 if e.n else math.nan
            row.append(f"{e.text()} ({rel:+.1f} %)" if e.n else "—")
        rows.append(row)
    return markdown(["steps", "SMoE ppl"] + [f"{m} − SMoE" for m in methods], rows)


def _relative_gap(cells: Cells, steps: str, method: str) -> tuple[float, int] | None:
    """(paired mean of method − SMoE over SMoE's mean perplexity, paired n) at ``steps``."""
    cs = cells("length", steps, "ppl")
    smoe, other = cs.get("smoe", {}), cs.get(method, {})
    e = paired(other, smoe)
    if not e.n:
        return None
    return e.mean / (sum(smoe.values()) / len(smoe)), e.n


def gap_trend(cells: Cells, lengths: Sequence[str], method: str) -> str:
    """A log-linear extrapolation of ``method``'s relative gap to SMoE from the two longest
    lengths that have both: where it would reach zero if it kept shrinking at that rate."""
    have = [(int(s), g) for s in lengths if (g := _relative_gap(cells, s, method)) is not None]
    if len(have) < 2:
        return ""
    (l1, (r1, _)), (l2, (r2, n2)) = have[-2], have[-1]
    per_x4 = (r2 - r1) / math.log(l2 / l1) * math.log(4)
    head = (f"{method}'s gap to SMoE, relative to SMoE's perplexity: {100 * r1:+.1f} % at {l1} "
            f"steps, {100 * r2:+.1f} % at {l2} (n = {n2}), {100 * per_x4:+.1f} points per 4× "
            f"steps. ")
    if r2 <= 0 or per_x4 >= 0:
        return head + "It is not shrinking towards a SMoE lead of zero.\n"
    zero = l2 * math.exp(r2 / (r1 - r2) * math.log(l2 / l1))
    zero = round(zero, 1 - math.floor(math.log10(zero)))  # two significant digits
    return head + (f"Kept at that rate it would reach zero near {zero:,.0f} steps, "
                   f"{zero / l2:,.0f}× the longest run (an extrapolation, not a measurement).\n")


def _total(cell: Cell) -> str:
    """The sum over a cell's runs, or "—" for a cell without runs."""
    return f"{sum(cell.values()):.0f}" if cell else "—"


def _skipped(main_fallbacks: Mapping[int, float]) -> str:
    """The verdict of a knob not run on the pre-training (:data:`PRETRAIN_SKIP`): the main
    runs' model when they never fell back, which their own counts show or do not."""
    if not main_fallbacks:
        return "not run (nor the main runs yet)"
    if sum(main_fallbacks.values()) == 0:
        return f"not run: the main model (its {len(main_fallbacks)} runs never fell back)"
    return "not run, though the main runs fell back: a gap in this study"


def knob_rows(cells: Cells, tags: Sequence[str], pretrain_steps: str) -> str:
    """Each knob against the main NAMEx-Full-Mom setting, on both tasks, with verdicts and the
    singular-bargain fallbacks of its runs (fine-tuning / pre-training)."""
    rows = []
    main_ft = cells("finetune", "", "acc").get("namex-full-mom", {})
    main_lm = cells("length", pretrain_steps, "ppl").get("namex-full-mom", {})
    main_fb = cells("length", pretrain_steps, "fallbacks").get("namex-full-mom", {})
    for t in tags:
        ft = cells(f"finetune-knob-{t}", "", "acc").get("namex-full-mom", {})
        lm = cells("knobs", pretrain_steps, "ppl").get(t, {})
        fb_ft = cells(f"finetune-knob-{t}", "", "fallbacks").get("namex-full-mom", {})
        fb_lm = cells("knobs", pretrain_steps, "fallbacks").get(t, {})
        e_ft, e_lm = paired(ft, main_ft), paired(lm, main_lm)
        lm_verdict = verdict(e_lm, t, "main", lower_is_better=True)
        if t in PRETRAIN_SKIP and not lm:
            lm_verdict = _skipped(main_fb)
        rows.append([t, e_ft.text() if e_ft.n else "—",
                     verdict(e_ft, t, "main", lower_is_better=False),
                     e_lm.text() if e_lm.n else "—", lm_verdict,
                     f"{_total(fb_ft)} / {_total(fb_lm)}"])
    return markdown(["knob", "fine-tuning accuracy − main", "verdict",
                     f"{pretrain_steps}-step ppl − main", "verdict", "fallbacks (ft / pt)"],
                    rows)


def insert_block(path: Path, block: str) -> bool:
    """Replace the text between :data:`START` and :data:`END` in ``path`` by ``block``;
    False (file untouched) when the file or a marker is missing."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _: f"{START}\n{block.strip()}\n{END}", text, count=1)
    path.write_text(new, encoding="utf-8")
    return True
