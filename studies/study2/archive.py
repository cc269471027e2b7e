"""The committed copy of the study's runs: the small files of every finished run (``result.json``,
``config.json``, ``metrics.jsonl``; no checkpoint, log or plot), so that the report can be
regenerated from a clone without the run folders (``make study2-report`` reads this copy).

A file is copied only when its run has finished with the plan's configuration
(:func:`studies.study2.jobs.job_done`), through a temporary name and ``os.replace``; a copied
run reads back as finished with the same configuration, which :func:`archive` checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from studies.study2.jobs import Job, job_done

KEPT = ("result.json", "config.json", "metrics.jsonl")
"""The files of a run folder that the report reads (the rest is re-creatable or large)."""


def archive(plan: Sequence[Job], root: Path, dest: Path) -> list[str]:
    """Copy the kept files of the finished runs of ``plan`` from ``root`` to ``dest``; return
    the keys copied. Raises RuntimeError if a copy does not read back as finished."""
    copied = []
    for job in plan:
        if not job_done(job, root):
            continue
        src, out = root / job.key, dest / job.key
        out.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (src / name).is_file():
                tmp = out / f".{name}.tmp"
                shutil.copyfile(src / name, tmp)
                os.replace(tmp, out / name)
        if not job_done(job, dest):
            raise RuntimeError(f"{dest / job.key} does not read back as a finished run")
        copied.append(job.key)
    return copied
