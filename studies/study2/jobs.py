"""Jobs of the study and the scheduler that runs them: in the plan's order, ``workers`` at a
time, each in its own (spawned) process, a job starting only after the jobs it needs.

A job is resumable by construction: a "train" job is :func:`namex_ref.train.train` with
``resume="if-present"`` (a finished run with the same configuration is skipped, an interrupted
one continues from its checkpoint, bit for bit on CPU); a "finetune" job
(:func:`studies.study2.finetune.run_finetune`) is short and restarts from its beginning when it
was interrupted (it writes ``result.json`` atomically at its end only).

One driver at a time per study folder: ``<root>/driver.lock`` holds the driver's pid; a second
driver refuses to start while that process is alive (a stale lock is taken over).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

JobKind = Literal["train", "finetune"]
LOCK_NAME = "driver.lock"
FAILED_NAME = "failed.jsonl"


@dataclass(frozen=True)
class Job:
    """One run of the study. key: its folder under the study root (unique), e.g.
    ``length/1600/smoe/seed0``. payload: a TrainConfig dict ("train", ``out`` is set from the key)
    or a FinetuneSpec dict ("finetune"). needs: keys of jobs that must have finished first."""

    key: str
    kind: JobKind
    payload: dict[str, Any] = field(hash=False)
    needs: tuple[str, ...] = ()


def job_done(job: Job, root: Path) -> bool:
    """Whether ``job`` finished with the same configuration (its result file says so)."""
    out = root / job.key
    if job.kind == "train":
        from namex_ref.train import read_result

        res = read_result(out)
        return res is not None and res.config.trajectory_dict() == train_config(job, root)\
            .trajectory_dict()
    from studies.study2.finetune import finetune_done

    return finetune_done(job.payload, out)


def train_config(job: Job, root: Path) -> Any:
    """The :class:`namex_ref.train.TrainConfig` of a "train" job (``out`` = root / key)."""
    from namex_ref.train import TrainConfig

    return TrainConfig.from_dict({**job.payload, "out": str(root / job.key), "progress": False})


def execute(job: Job, root: str) -> str:
    """Run one job (in a worker process); returns its key. Raises what the run raises."""
    base = Path(root)
    if job.kind == "train":
        from namex_ref.train import train

        train(train_config(job, base), resume="if-present")
    else:
        from studies.study2.finetune import run_finetune

        run_finetune(job.payload, base / job.key, pretrained=base / job.needs[0])
    return job.key


class LockedError(RuntimeError):
    """Another driver holds the study folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(root: Path) -> Path:
    """Write this process's pid to ``root/driver.lock``; refuse while another live pid holds it."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_NAME
    if lock.is_file():
        text = lock.read_text().strip()
        if text.isdigit() and int(text) != os.getpid() and _alive(int(text)):
            raise LockedError(
                f"{str(root)!r} is being run by process {text} (its {LOCK_NAME}); wait for it "
                f"or stop it (kill {text}) before starting another driver"
            )
    tmp = root / f".{LOCK_NAME}.{os.getpid()}"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, lock)
    return lock


def _record_failure(root: Path, key: str, error: str) -> None:
    with open(root / FAILED_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": key, "time": time.time(), "error": error}) + "\n")


def run_jobs(jobs: Sequence[Job], root: Path, *, workers: int = 2,
             log: Callable[[str], None] = print) -> tuple[list[str], list[str]]:
    """Run the unfinished ``jobs`` in order, ``workers`` at a time (``workers=1``: in this
    process, one after the other); (finished, failed) keys.

    A job waits for its ``needs``; a job whose need failed is not run (listed as failed). A
    failure is logged to ``root/failed.jsonl`` with its traceback and does not stop the rest.
    """
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    unknown = sorted({n for j in jobs for n in j.needs} - set(keys))
    if unknown:
        raise ValueError(f"jobs need keys that are not in the plan: {unknown}")
    lock = acquire_lock(root)
    finished = {j.key for j in jobs if job_done(j, root)}
    pending = [j for j in jobs if j.key not in finished]
    log(f"[study2] {len(finished)} of {len(jobs)} runs finished; {len(pending)} to run, "
        f"{workers} at a time")
    failed: list[str] = []
    try:
        if workers == 1:  # in this process, in order (tests, debugging)
            for job in pending:
                _run_inline(job, root, finished, failed, log)
            return sorted(finished), failed
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            running: dict[Future[str], Job] = {}
            while pending or running:
                for job in list(pending):
                    if len(running) >= workers:
                        break
                    if any(n in failed for n in job.needs):
                        pending.remove(job)
                        failed.append(job.key)
                        log(f"[study2] {job.key}: not run (a run it needs failed)")
                    elif all(n in finished for n in job.needs):
                        pending.remove(job)
                        log(f"[study2] {job.key}: started")
                        running[pool.submit(execute, job, str(root))] = job
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    try:
                        fut.result()
                    except Exception as exc:
                        failed.append(job.key)
                        text = "".join(traceback.format_exception(exc))
                        _record_failure(root, job.key, text)
                        log(f"[study2] {job.key}: FAILED ({type(exc).__name__}: {exc})")
                    else:
                        finished.add(job.key)
                        log(f"[study2] {job.key}: finished")
    finally:
        lock.unlink(missing_ok=True)
    return sorted(finished), failed


def _run_inline(job: Job, root: Path, finished: set[str], failed: list[str],
                log: Callable[[str], None]) -> None:
    if any(n in failed for n in job.needs) or not all(n in finished for n in job.needs):
        failed.append(job.key)
        log(f"[study2] {job.key}: not run (a run it needs failed)")
        return
    log(f"[study2] {job.key}: started")
    try:
        execute(job, str(root))
    except Exception as exc:
        failed.append(job.key)
        _record_failure(root, job.key, "".join(traceback.format_exception(exc)))
        log(f"[study2] {job.key}: FAILED ({type(exc).__name__}: {exc})")
    else:
        finished.add(job.key)
        log(f"[study2] {job.key}: finished")
