"""Training runs in a few long-lived worker processes (each pays the imports once, then runs many jobs).

Used by ``scripts/compare.py``: a comparison is ~100 short runs, and on a small CPU machine starting a
fresh interpreter per run (torch, Lightning, timm imports) costs as much as a run. Each job composes the
run config exactly as ``bcd-pipeline`` stages do (:func:`bcd_lightning.pipeline.compose_stage`) and calls
:func:`bcd_lightning.train.train`, which seeds everything first, so a run in a reused worker is the same
run as in a fresh process. A job's stdout and stderr go to its own log file.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainJob:
    """One run: ``bcd-train experiment=embedded/<stage> <overrides>`` (or a detection task's) writing into
    ``run_dir``."""

    name: str
    overrides: tuple[str, ...]
    run_dir: str
    stage: str = "baseline"
    #: ``segmentation`` (``bcd-train``) or a detection task, ``detection`` | ``instance``
    #: (``python -m bcd_lightning.detection.train experiment=<task>/<stage>``).
    task: str = "segmentation"

    def run(self) -> None:
        """Compose this job's config as its pipeline's stages do and train it in this process."""
        if self.task == "segmentation":
            from bcd_lightning.pipeline import compose_stage
            from bcd_lightning.train import train

            train(compose_stage(self.stage, list(self.overrides), Path(self.run_dir)))
        else:
            from bcd_lightning.detection import pipeline
            from bcd_lightning.detection import train as detection_train

            cfg = pipeline.compose_stage(self.stage, list(self.overrides), Path(self.run_dir), self.task)
            detection_train.train(cfg)

    @property
    def log(self) -> Path:
        return Path(self.run_dir).with_suffix(".log")


@dataclass(frozen=True)
class JobResult:
    job: TrainJob
    ok: bool
    seconds: float


def run_job(job: TrainJob) -> JobResult:
    """Run ``job`` in this process, its output redirected (file descriptors 1 and 2) to ``job.log``."""
    start = time.perf_counter()
    Path(job.run_dir).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    ok = False
    with open(job.log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            job.run()
            ok = True
        except Exception:  # the job fails, the comparison goes on (its log has the traceback)
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return JobResult(job, ok, time.perf_counter() - start)


def run_jobs(
    jobs: Sequence[TrainJob], n_jobs: int, report: Callable[[JobResult], None] | None = None
) -> list[JobResult]:
    """Run ``jobs`` on ``n_jobs`` worker processes (spawned, reused); results in completion order."""
    results: list[JobResult] = []
    if not jobs:
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(max(1, min(n_jobs, len(jobs)))) as pool:
        done: Iterable[JobResult] = pool.imap_unordered(run_job, jobs, chunksize=1)
        for result in done:
            results.append(result)
            if report is not None:
                report(result)
    return results
