"""The report of the study, from the run folders' own files only: ``result.json`` (final
validation perplexity, fallbacks, seconds per step; fine-tuning scores) and ``metrics.jsonl``
(progress of unfinished runs). No number is typed here; the plan says which runs to expect, so
the report says how many of them finished and labels itself PARTIAL until all have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from studies.study2.jobs import Job, job_done
from studies.study2.knobs import PRETRAIN_SKIP
from studies.study2.stats import Cell, cell_estimate, markdown, paired, table_rows
from studies.study2.summary import (
    LONG_GROUP,
    claims,
    gap_trend,
    headline,
    insert_block,
    knob_rows,
    long_finetune,
    smoe_lead,
    verdict,
)

FINISH_COMMAND = "make study2"


@dataclass(frozen=True)
class Run:
    """One finished run: the job, the parsed key and the values the report uses."""

    job: Job
    group: str      # "length", "finetune", "finetune-knob-<tag>", "knobs"
    setting: str    # steps (length, knobs), "" (finetune)
    tag: str        # method, method-seg<L>, knob tag
    seed: int
    values: dict[str, float]


def _parse(job: Job) -> tuple[str, str, str, int]:
    parts = job.key.split("/")
    seed = int(parts[-1].removeprefix("seed"))
    if parts[0] in ("length", "knobs"):
        return parts[0], parts[1], parts[2], seed
    return parts[0], "", parts[1], seed


def load_runs(plan: Sequence[Job], root: Path) -> tuple[list[Run], list[Job]]:
    """(finished runs, unfinished jobs) of the plan."""
    done, todo = [], []
    for job in plan:
        if not job_done(job, root):
            todo.append(job)
            continue
        record = json.loads((root / job.key / "result.json").read_text(encoding="utf-8"))
        if job.kind == "train":
            values = {"ppl": float(record["valid_ppl"]), "fallbacks": float(record["fallbacks"]),
                      "seconds": float(record["seconds_per_step"]) * int(record["steps"])}
        else:
            values = {"acc": 100 * float(record["accuracy"]),
                      "f1": 100 * float(record["macro_f1"]),
                      "fallbacks": float(record["fallbacks"]),
                      "seconds": float(record["train_seconds"])}
        group, setting, tag, seed = _parse(job)
        done.append(Run(job, group, setting, tag, seed, values))
    return done, todo


def cells(runs: Sequence[Run], group: str, setting: str, metric: str,
          order: Sequence[str] = ()) -> dict[str, Cell]:
    """tag -> {seed: value} for one group and setting; tags in ``order`` first."""
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.group == group and r.setting == setting:
            out.setdefault(r.tag, {})[r.seed] = r.values[metric]
    ranked = [t for t in order if t in out] + sorted(t for t in out if t not in order)
    return {t: out[t] for t in ranked}


def _fallback_column(runs: Sequence[Run], group: str, setting: str, tags: Sequence[str],
                     ) -> list[str]:
    col = []
    for t in tags:
        counts = [int(r.values["fallbacks"]) for r in runs
                  if r.group == group and r.setting == setting and r.tag == t]
        col.append(f"{sum(counts)} in {len(counts)} runs")
    return col


def _table(runs: Sequence[Run], group: str, setting: str, metric: str, refs: Sequence[str],
           order: Sequence[str], digits: int = 2) -> str:
    """The cells of ``order`` only (a length's segment-length points have their own table);
    a method without a finished run gets a row with n = 0."""
    found = cells(runs, group, setting, metric, order)
    if not found:
        return "_No finished run yet._\n"
    cs = {t: found.get(t, {}) for t in order}
    header, rows = table_rows(cs, refs, digits)
    fb = _fallback_column(runs, group, setting, list(cs))
    return markdown([*header, "fallbacks"], [[*row, f] for row, f in zip(rows, fb, strict=True)])


def _status(plan: Sequence[Job], runs: Sequence[Run], todo: Sequence[Job], root: Path) -> str:
    groups: dict[str, list[int]] = {}
    finished = {r.job.key for r in runs}
    for job in plan:
        g = "knobs" if "knob" in job.key else job.key.split("/")[0]
        groups.setdefault(g, [0, 0])
        groups[g][1] += 1
        groups[g][0] += job.key in finished
    lines = [f"- {g}: {a} of {b} runs finished" for g, (a, b) in groups.items()]
    running = []
    for job in todo:
        metrics = root / job.key / "metrics.jsonl"
        if metrics.is_file():
            rec = [json.loads(x) for x in metrics.read_text().splitlines() if x.endswith("}")]
            if rec:
                total = job.payload.get("steps", "?")
                running.append(f"`{job.key}` (step {rec[-1]['step']} of {total})")
    if running:
        lines.append("- started, not finished: " + ", ".join(running))
    return "\n".join(lines) + "\n"


def _length_summary(runs: Sequence[Run], lengths: Sequence[str], methods: Sequence[str]) -> str:
    header = ["steps"] + [f"{m} − smoe (paired)" for m in methods if m != "smoe"]
    rows = []
    for steps in lengths:
        cs = cells(runs, "length", steps, "ppl")
        if "smoe" not in cs:
            continue
        rows.append([steps] + [paired(cs[m], cs["smoe"]).text() if m in cs else "—"
                               for m in methods if m != "smoe"])
    return markdown(header, rows) if rows else "_No finished run yet._\n"


def _segment_table(runs: Sequence[Run], steps: str, methods: Sequence[str], seg: int,
                   segs: Sequence[int]) -> str:
    header = ["method", "segment", "n", "mean", "95% interval", f"− segment {seg}, paired",
              *(f"− {r} ({seg}), paired" for r in KNOB_REFS)]
    rows = []
    base = cells(runs, "length", steps, "ppl")
    for m in methods:
        for s in segs:
            tag = m if s == seg else f"{m}-seg{s}"
            cell = base.get(tag)
            if not cell:
                continue
            e = cell_estimate(cell)
            ref = paired(cell, base[m]).text() if m in base and s != seg else "reference"
            others = ["—" if tag == r else paired(cell, base[r]).text() if r in base else "—"
                      for r in KNOB_REFS]
            rows.append([m, str(s), str(e.n), f"{e.mean:.2f}", e.interval(), ref, *others])
    return markdown(header, rows) if rows else "_No finished run yet._\n"


def _compute(runs: Sequence[Run]) -> str:
    total = sum(r.values["seconds"] for r in runs)
    by: dict[str, float] = {}
    for r in runs:
        g = "knobs" if "knob" in r.group else r.group
        by[g] = by.get(g, 0.0) + r.values["seconds"]
    parts = ", ".join(f"{g} {s / 3600:.2f} h" for g, s in by.items())
    return (f"Training time of the finished runs (seconds per step × steps, as each run "
            f"measured it; evaluation, start-up and unfinished runs not included): "
            f"{total / 3600:.2f} core-hours ({parts}). The runs shared 2 cores with other "
            f"work under `nice -n 19`, so these are wall-clock seconds of a loaded core.\n")


def write_report(plan: Sequence[Job], root: Path, out: Path, *, profile: str = "full",
                 summary_into: Sequence[Path] = ()) -> str:
    """Write the markdown report to ``out`` and its plots beside it; return the markdown. The
    summary also goes between the markers of every file of ``summary_into``
    (:func:`studies.study2.summary.insert_block`; README.md gets the short form)."""
    from studies.study2.finetune import METHODS as FT_METHODS
    from studies.study2.knobs import KNOBS
    from studies.study2.length import METHODS, SEGMENT_METHODS, preset_segment_len
    from studies.study2.plots import plot_curves, plot_finetune, plot_length

    runs, todo = load_runs(plan, root)
    lengths = sorted({r.setting for r in runs if r.group == "length"} | {
        str(j.payload["steps"]) for j in plan if j.key.startswith("length/")}, key=int)
    complete = not todo
    label = "complete" if complete else "PARTIAL"
    seg = preset_segment_len()
    segs = sorted({seg, seg // 2, seg * 2})
    refs = ["smoe", "ep-camex"]
    stem = out.with_suffix("")
    md: list[str] = [f"# Reproduction II (issue 29): training length, fine-tuning, knobs — "
                     f"{label}\n"]
    if not complete:
        md.append(f"**PARTIAL RESULTS.** {len(runs)} of {len(plan)} planned runs have finished; "
                  f"every table gives n per cell, and cells with n < 3 have no or a very wide "
                  f"interval. Finish with `{FINISH_COMMAND}` (resumable: finished runs are "
                  f"skipped, interrupted ones resume from their checkpoint), then regenerate "
                  f"this file with `{FINISH_COMMAND}-report`.\n")
    md.append(f"Produced by `python -m studies.study2 report` (profile `{profile}`) from the run "
              f"folders under `{root}`; plan and settings in `studies/study2/` "
              f"(module docstrings). Values: 95 % Student t intervals over seeds; paired "
              f"columns are per-seed differences on the seeds both cells have.\n")
    knob_steps = sorted({j.key.split("/")[1] for j in plan if j.key.startswith("knobs/")})
    summary, short = _summaries(runs, lengths, [t for t, _, _ in KNOBS], out.name, label,
                                knob_steps[0] if knob_steps else "1600")
    md.append(summary)
    for path in summary_into:
        insert_block(path, short if path.name == "README.md" else summary)
    md.append("## Status\n\n" + _status(plan, runs, todo, root))
    md.append("## 1. Training length (tiny preset, validation perplexity, lower is better)\n")
    md.append("SMoE's lead, per length (method − SMoE, paired by seed; positive = SMoE "
              "better):\n\n" + _length_summary(runs, lengths, METHODS))
    for steps in lengths:
        warm = sorted({j.payload["warmup"] for j in plan if j.key.startswith(f"length/{steps}/")})
        md.append(f"### {steps} steps (warmup {', '.join(map(str, warm))})\n\n"
                  + _table(runs, "length", steps, "ppl", refs, METHODS))
    if lengths:
        md.append(f"### Segment length at {lengths[-1]} steps (preset: {seg} tokens)\n\n"
                  + _segment_table(runs, lengths[-1], SEGMENT_METHODS, seg, segs))
    md.append(f"![length]({plot_length(runs, lengths, METHODS, stem.name + '_length.png', out)})\n")
    curves = plot_curves(runs, root, lengths, METHODS, stem.name + "_curves.png", out)
    md.append("Learning curves (periodic evaluation on 4 validation batches, from each run's "
              f"`metrics.jsonl`):\n\n![curves]({curves})\n")
    md.append("## 2. Fine-tuning from one pre-trained SMoE (held-out passages, higher is better)"
              "\n\n" + _finetune_settings(plan))
    for metric, name in (("acc", "accuracy (%)"), ("f1", "macro-F1 (%)")):
        md.append(f"### {name}\n\n" + _table(runs, "finetune", "", metric, refs, FT_METHODS))
    md.append(f"![finetune]({plot_finetune(runs, FT_METHODS, stem.name + '_finetune.png', out)})"
              "\n")
    md.append(_long_finetune_section(runs, plan, refs))
    md.append(_knob_section(runs, plan, [t for t, _, _ in KNOBS]))
    md.append("## Compute\n\n" + _compute(runs))
    text = "\n".join(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def _summaries(runs: Sequence[Run], lengths: Sequence[str], tags: Sequence[str], report: str,
               label: str, knob_steps: str) -> tuple[str, str]:
    """(the summary section, its short form for the README), from the finished runs."""
    from studies.study2.length import METHODS, SEGMENT_METHODS, preset_segment_len

    seg = preset_segment_len()
    segs = sorted({seg, seg // 2, seg * 2})

    def bound(group: str, setting: str, metric: str) -> dict[str, Cell]:
        return cells(runs, group, setting, metric)

    others = [m for m in METHODS if m != "smoe"]
    lead = smoe_lead(bound, lengths, others) + "\n" + gap_trend(bound, lengths,
                                                                  "namex-full-mom")
    fb = sum(int(r.values["fallbacks"]) for r in runs)
    head = (f"## Summary ({label}; generated from {len(runs)} finished runs)\n\n"
            "Verdict rule: a paired difference whose 95 % interval excludes 0 names the better "
            "method; otherwise \"not separated\" (\"equal on every seed\" when every paired "
            "difference is 0); one seed gives no interval. Paper numbers: docs/math.md §5.\n\n")
    summary = (head + headline(bound, lengths)
               + long_finetune(bound, lengths[-1] if lengths else "")
               + "\nSMoE's lead per training length (validation perplexity, method − SMoE, "
               "paired; positive = SMoE better; in % of SMoE's perplexity):\n\n" + lead
               + (f"\nThe routing segment at {lengths[-1]} steps, halved and doubled (the "
                  f"preset's is {seg} tokens; validation perplexity):\n\n"
                  + _segment_table(runs, lengths[-1], SEGMENT_METHODS, seg, segs)
                  if lengths else "")
               + "\nThe merge's knobs on NAMEx-Full-Mom (each against the main setting: γ 1, "
               "|β| 0.5, φ π/6, 20 Newton steps, ridge; paired by seed):\n\n"
               + knob_rows(bound, tags, knob_steps)
               + f"\nSingular-bargain fallbacks: {fb} in {len(runs)} runs. Full tables and "
               f"plots: [{report}]({report}).\n")
    ft = [c for c in claims([]) if c.metric == "acc"][:2]
    rows = []
    for c in ft:
        e = paired(bound("finetune", "", "acc").get(c.a, {}),
                   bound("finetune", "", "acc").get(c.b, {}))
        rows.append([c.claim, e.text() if e.n else "—",
                     verdict(e, c.a, c.b, lower_is_better=False)])
    short = (f"Study 2 ({label}, {len(runs)} runs, tiny preset on CPU): SMoE's lead in "
             "pre-training per length (validation perplexity, method − SMoE, paired, 95 %):\n\n"
             + lead + "\nFine-tuning from one pre-trained SMoE (held-out accuracy, "
             "points, paired, 95 %):\n\n" + markdown(["claim", "here", "verdict"], rows)
             + "\nThe whole summary, with the paper's numbers and the knobs: "
             "[results/reproduction.md](results/reproduction.md).\n")
    return summary, short


def _finetune_settings(plan: Sequence[Job]) -> str:
    """One sentence from the plan's fine-tuning spec (settings, not results)."""
    from studies.study2.task import class_names

    specs = [j.payload for j in plan if j.key.startswith("finetune/")]
    if not specs:
        return "Not in this report's plan.\n"
    s = specs[0]
    pre = next(j for j in plan if j.key.startswith("finetune/")).needs[0]
    return (f"Task `{s['task']}`: which of {len(class_names(s['task']))} classes "
            f"({', '.join(class_names(s['task']))}) a {s['window']}-token passage comes from; "
            f"within each book every {s['test_every']}th chapter is held out (at most "
            f"{s['test_per_chapter']} windows each are scored). Pre-trained model: `{pre}`. "
            f"Fine-tuning: {s['steps']} steps of {s['batch_size']} class-balanced passages, "
            f"lr {s['lr']} (warmup {s['warmup']}, cosine). Task in `studies/study2/task.py`, "
            f"upcycling and protocol in `studies/study2/finetune.py`.\n")


def _long_finetune_section(runs: Sequence[Run], plan: Sequence[Job], refs: Sequence[str]) -> str:
    """Plan stage 8: the fine-tuning from the longest pre-training, if planned."""
    from studies.study2.plan import LONG_FINETUNE_METHODS

    jobs = [j for j in plan if j.key.startswith(f"{LONG_GROUP}/")]
    if not jobs:
        return ""
    out = [f"### Fine-tuning from `{jobs[0].needs[0]}` (plan stage 8: the same protocol from a "
           "stronger pre-trained SMoE)\n"]
    for metric, name in (("acc", "accuracy (%)"), ("f1", "macro-F1 (%)")):
        out.append(f"{name}:\n\n" + _table(runs, LONG_GROUP, "", metric, refs,
                                              LONG_FINETUNE_METHODS))
    return "\n".join(out)


def _knob_section(runs: Sequence[Run], plan: Sequence[Job], tags: Sequence[str]) -> str:
    planned = any("knob" in j.key for j in plan)
    head = "## 3. Knobs of the merge (NAMEx-Full-Mom)\n\n"
    if not planned:
        return head + ("Not run in this report's plan (`--parts knobs`; config list in "
                       "`studies/study2/knobs.py`).\n")
    out = [head]
    for metric, name in (("acc", "fine-tuning accuracy (%)"), ("f1", "fine-tuning macro-F1 (%)")):
        ref = cells(runs, "finetune", "", metric)
        main = ref.get("namex-full-mom", {})
        rows = [_knob_row("main (γ 1, \\|β\\| 0.5, φ π/6, Newton 20, ridge)", main, main, ref,
                          _fallback_column(runs, "finetune", "", ["namex-full-mom"])[0])]
        for t in tags:
            c = cells(runs, f"finetune-knob-{t}", "", metric).get("namex-full-mom", {})
            fb = _fallback_column(runs, f"finetune-knob-{t}", "", ["namex-full-mom"])[0]
            rows.append(_knob_row(t, c, main, ref, fb))
        out.append(f"### {name}\n\n" + markdown(_KNOB_HEADER, rows))
    steps = sorted({r.setting for r in runs if r.group == "knobs"})
    for s in steps:
        ref = cells(runs, "length", s, "ppl")
        main = ref.get("namex-full-mom", {})
        rows = [_knob_row("main", main, main, ref,
                          _fallback_column(runs, "length", s, ["namex-full-mom"])[0])]
        knob = cells(runs, "knobs", s, "ppl")
        rows += [_knob_row(t, knob.get(t, {}), main, ref,
                           _fallback_column(runs, "knobs", s, [t])[0])
                 for t in tags if t not in PRETRAIN_SKIP or t in knob]
        skipped = ", ".join(t for t in tags if t in PRETRAIN_SKIP and t not in knob)
        note = (f"\nNot run on the pre-training: {skipped} (see the summary's knob table and "
                "`studies/study2/knobs.py`).\n") if skipped else ""
        out.append(f"### pre-training, {s} steps, validation perplexity\n\n"
                   + markdown(_KNOB_HEADER, rows) + note)
    return "\n".join(out)


KNOB_REFS = ("smoe", "ep-camex")
"""The methods every knob row is also paired with (issue 29's checks), same task and seeds."""
_KNOB_HEADER = ["setting", "n", "mean", "95% interval", "− main, paired",
                *(f"− {m}, paired" for m in KNOB_REFS), "fallbacks"]


def _knob_row(label: str, cell: Mapping[int, float], main: Mapping[int, float],
              ref: Mapping[str, Mapping[int, float]], fallbacks: str) -> list[str]:
    """One row: the cell, its paired difference to the main setting (``main``) and to each of
    :data:`KNOB_REFS` (their cells in ``ref``: the same task and length), its fallbacks."""
    e = cell_estimate(cell)
    diff = "reference" if cell is main else paired(cell, main).text()
    others = [paired(cell, ref[m]).text() if m in ref and cell else "—" for m in KNOB_REFS]
    mean = f"{e.mean:.2f}" if e.n else "—"
    return [label, str(e.n), mean, e.interval(), diff, *others, fallbacks]

