"""Command line of the study: ``python -m studies.study2 {run,report,list}``.

run: train every unfinished job of the plan (resumable; ``--jobs`` runs at a time).
archive: copy the finished runs' small files from ``--root`` to ``--to`` (the committed copy).
report: write the markdown report and plots from the run folders' files only.
list: print the plan, one job per line, with "done" for the finished ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies.study2.jobs import LockedError, job_done, run_jobs
from studies.study2.plan import DEFAULT_PARTS, PARTS, build_plan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies.study2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "archive", "report", "list"))
    p.add_argument("--profile", choices=("full", "smoke"), default="full")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: %(default)s)")
    p.add_argument("--root", default="runs/study2", help="study folder (default: %(default)s)")
    p.add_argument("--to", default="results/study2-runs",
                   help="archive: where the copy goes (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: %(default)s)")
    p.add_argument("--out", default="results/reproduction2.md",
                   help="report file; plots are written beside it (default: %(default)s)")
    p.add_argument("--summary-into", default="results/reproduction.md,README.md",
                   help="files whose study2-summary block the report rewrites "
                        "(comma-separated; default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    try:
        plan = build_plan(args.profile, parts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = Path(args.root)
    if args.command == "list":
        for job in plan:
            print(f"{'done' if job_done(job, root) else '    '}  {job.key}")
        return 0
    if args.command == "run":
        if args.jobs < 1:
            print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
            return 2
        try:
            _, failed = run_jobs(plan, root, workers=args.jobs)
        except LockedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 1 if failed else 0
    if args.command == "archive":
        from studies.study2.archive import archive

        keys = archive(plan, root, Path(args.to))
        print(f"archived {len(keys)} finished runs of {len(plan)} into {args.to}")
        return 0
    from studies.study2.report import write_report

    into = [Path(p) for p in args.summary_into.split(",") if p]
    write_report(plan, root, Path(args.out), profile=args.profile, summary_into=into)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
