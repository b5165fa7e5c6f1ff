"""The end of every multirun: one screen saying what happened, and a non-zero exit on failures.

``SweepSummary`` is a Hydra callback (``configs/hydra/default.yaml``). It runs in the process that
launched the sweep, so it reads the outcome of each job from the job's ``status.json``: this works
the same whether the jobs ran in-process, in joblib workers or on SLURM.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

#: at most this many failed jobs are listed (with their error); the report has them all
MAX_LISTED_FAILURES = 5
#: file times may trail the clock by this much (coarse file systems)
CLOCK_SLACK_S = 1.0


@dataclass
class Job:
    name: str
    overrides: list[str]
    status: str  # completed, skipped, failed, interrupted, unfinished
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def read_job(job_dir: Path, started_at: float) -> Job:
    """The outcome of one job of a sweep that started at ``started_at`` (``time.time()``)."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    status_file = job_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    state = status.get("status", "unfinished")
    if state == "running":
        state = "unfinished"  # the job died without recording why (killed, out of memory)
    if state == "completed" and status.get("finished_at", started_at) < started_at - CLOCK_SLACK_S:
        state = "skipped"  # finished by an earlier call (resume=true)
    return Job(job_dir.name, overrides, state, status.get("metrics") or {}, status.get("error", ""))


def jobs_of_this_sweep(sweep_dir: Path, started_at: float) -> list[Job]:
    """Jobs Hydra started since ``started_at``: their ``.hydra/`` is written when they start.

    Dirs of earlier calls in the same sweep dir (an Optuna study continued) are left out.
    """
    jobs = []
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        if overrides.stat().st_mtime >= started_at - CLOCK_SLACK_S:
            jobs.append(read_job(overrides.parent.parent, started_at))
    return sorted(jobs, key=lambda j: (len(j.name), j.name))


def direction(config: DictConfig, metric: str) -> str:
    """``maximize`` or ``minimize``: the Optuna sweeper's, else minimise losses only."""
    sweeper_direction = config.hydra.get("sweeper", {}).get("direction")
    if isinstance(sweeper_direction, str):
        return sweeper_direction
    return "minimize" if "loss" in metric else "maximize"


def best_job(jobs: list[Job], metric: str, goal: str) -> Job | None:
    scored = [
        j
        for j in jobs
        if j.status in ("completed", "skipped")
        and isinstance(j.metrics.get(metric), (int, float))
        and math.isfinite(j.metrics[metric])
    ]
    if not scored:
        return None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda j: j.metrics[metric])


def summary_lines(jobs: list[Job], metric: str | None, goal: str, report: str) -> list[str]:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "skipped")}
    others = {j.status for j in jobs} - set(counts)
    counts.update({s: sum(j.status == s for j in jobs) for s in sorted(others)})
    lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    best = best_job(jobs, metric, goal) if metric else None
    if best is not None:
        lines.append(
            f"best {metric}: {best.metrics[metric]:.4f} (job {best.name}: "
            f"{' '.join(best.overrides) or 'no overrides'})"
        )
    elif metric:
        lines.append(f"best {metric}: none (no job finished with it)")
    bad = [j for j in jobs if j.status not in ("completed", "skipped")]
    for job in bad[:MAX_LISTED_FAILURES]:
        reason = job.error or "no error recorded (killed?)"
        lines.append(f"  {job.status} job {job.name} ({' '.join(job.overrides)}): {reason[:160]}")
    if len(bad) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_FAILURES} more (see the report)")
    lines.append(f"report: {report}")
    return lines


def write_report(sweep_dir: Path) -> str:
    """Write the sweep's report (``imgcls-report``); where it is, or why there is none."""
    from imgcls.report import RESULTS_MD, ReportError, build_report

    try:
        build_report([sweep_dir])
    except ReportError as err:
        return f"none ({err})"
    return str(sweep_dir / RESULTS_MD)


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome; exit 1 when a job failed.

    ``fail_on_failed_jobs=false`` keeps exit code 0 (the Optuna searches: failed trials are a
    normal part of a search there).
    """

    def __init__(self, fail_on_failed_jobs: bool = True) -> None:
        self.fail_on_failed_jobs = fail_on_failed_jobs
        self.started_at = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_at = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = jobs_of_this_sweep(sweep_dir, self.started_at)
        metric = config.get("optimized_metric")
        report = write_report(sweep_dir)
        print("\n".join(summary_lines(jobs, metric, direction(config, metric or ""), report)))
        failed = sum(j.status not in ("completed", "skipped") for j in jobs)
        if failed and self.fail_on_failed_jobs:
            print(
                f"error: {failed} of {len(jobs)} sweep jobs failed (listed above); fix them and "
                f"rerun with resume=true hydra.sweep.dir={sweep_dir}, or set "
                "hydra.callbacks.sweep_summary.fail_on_failed_jobs=false to exit 0",
                file=sys.stderr,
            )
            raise SystemExit(1)
