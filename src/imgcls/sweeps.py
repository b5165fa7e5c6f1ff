"""What every multirun ends with: ``SweepSummary``, a Hydra callback (configs/hydra/default.yaml).

It prints one screen (jobs completed / failed / skipped, the best ``optimized_metric``, where the
report is) and exits 1 when more than ``max_failure_rate`` of the jobs failed (default: the
sweeper's ``hydra.sweeper.max_failure_rate``, 0.5 in the Optuna searches, else 0: any failed job),
with one line naming the failed jobs, the first error and its traceback file. The Optuna pieces
are in ``imgcls.search``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imgcls.run_dir import ERROR_FILE, RunDir, find_run_dirs

# ------------------------------------------------------------------------- sweep summary
#: at most this many failed jobs are listed (with their error); the report has them all
MAX_LISTED_FAILURES = 5
#: file times may trail the clock by this much (coarse file systems)
CLOCK_SLACK_S = 1.0
#: where a failed run keeps its traceback (the life cycle's ``traceback.txt``, formerly error.txt)
TRACEBACK_FILES = ("traceback.txt", ERROR_FILE)


@dataclass
class Job:
    path: Path
    overrides: list[str]
    status: str  # completed, skipped, failed, interrupted, unfinished
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def traceback(self) -> Path | None:
        return next((p for p in map(self.path.joinpath, TRACEBACK_FILES) if p.is_file()), None)


def read_job(run: RunDir, started_at: float) -> Job:
    """The outcome of one job of a sweep that started at ``started_at`` (``time.time()``)."""
    status = run.status()
    state = status.get("status", "unfinished")
    if state == "running":
        state = "unfinished"  # the job died without recording why (killed, out of memory)
    if state == "completed" and status.get("finished_at", started_at) < started_at - CLOCK_SLACK_S:
        state = "skipped"  # finished by an earlier call (resume=true)
    metrics, error = status.get("metrics") or {}, status.get("error", "")
    return Job(run.path, run.overrides(), state, metrics, error)


def jobs_of_this_sweep(sweep_dir: Path, started_at: float) -> list[Job]:
    """Jobs Hydra started since ``started_at``: their ``.hydra/`` is written when they start.

    Dirs of earlier calls in the same sweep dir (an Optuna study continued) are left out.
    """
    jobs = [
        read_job(run, started_at)
        for run in find_run_dirs([sweep_dir])
        if run.started_at_file_time() >= started_at - CLOCK_SLACK_S
    ]
    return sorted(jobs, key=lambda j: (len(j.name), j.name))


def best_job(jobs: list[Job], metric: str, goal: str) -> Job | None:
    scored = [
        j
        for j in jobs
        if j.status in ("completed", "skipped")
        and isinstance(j.metrics.get(metric), (int, float))
        and math.isfinite(j.metrics[metric])
    ]
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda j: j.metrics[metric]) if scored else None


def summary_lines(jobs: list[Job], metric: str | None, goal: str, report: str) -> list[str]:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "skipped")}
    counts |= {s: sum(j.status == s for j in jobs) for s in sorted({j.status for j in jobs})}
    lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    best = best_job(jobs, metric, goal) if metric else None
    if best is not None:
        lines.append(
            f"best {metric}: {best.metrics[metric]:.4f} (job {best.name}: "
            f"{' '.join(best.overrides) or 'no overrides'})"
        )
    elif metric:
        lines.append(f"best {metric}: none (no job finished with it)")
    bad = failed_jobs(jobs)
    for job in bad[:MAX_LISTED_FAILURES]:
        reason = job.error or "no error recorded (killed?)"
        lines.append(f"  {job.status} job {job.name} ({' '.join(job.overrides)}): {reason[:160]}")
    if len(bad) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_FAILURES} more (see the report)")
    lines.append(f"report: {report}")
    return lines


def failed_jobs(jobs: list[Job]) -> list[Job]:
    return [j for j in jobs if j.status not in ("completed", "skipped")]


def failure_line(jobs: list[Job], search: bool, max_failure_rate: float, sweep_dir: Path) -> str:
    """``error: ...`` naming the failed jobs, the first error and where its traceback is."""
    bad = failed_jobs(jobs)
    first = bad[0]
    where = f" (traceback: {first.traceback})" if first.traceback else ""
    allowed = f"at most {max_failure_rate:.0%} allowed" if max_failure_rate else "none allowed"
    again = "continue the study with" if search else "rerun with resume=true"
    return (
        f"error: {len(bad)} of {len(jobs)} {'trials' if search else 'sweep jobs'} failed "
        f"({allowed}): {', '.join(j.name for j in bad)}; first error: "
        f"{first.error or 'none recorded (killed?)'}{where}; fix it and {again} "
        f"hydra.sweep.dir={sweep_dir}"
    )


def write_report(sweep_dir: Path) -> str:
    """Write the sweep's report (``imgcls-report``); where it is, or why there is none."""
    # imported here: the report (scipy, matplotlib) is loaded only when a multirun ends
    from imgcls.report import RESULTS_MD, ReportError, build_report

    try:
        build_report([sweep_dir])
    except ReportError as err:
        return f"none ({err})"
    return str(sweep_dir / RESULTS_MD)


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome; exit 1 when more than ``max_failure_rate`` of
    its jobs failed (``None``: the sweeper's, else 0)."""

    def __init__(self, max_failure_rate: float | None = None) -> None:
        self.max_failure_rate = max_failure_rate
        self.started_at = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_at = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = jobs_of_this_sweep(sweep_dir, self.started_at)
        metric = config.get("optimized_metric")
        goal = config.hydra.sweeper.get("direction")
        if not isinstance(goal, str):  # the Optuna sweeper's, else minimise losses only
            goal = "minimize" if "loss" in (metric or "") else "maximize"
        report = write_report(sweep_dir)
        print("\n".join(summary_lines(jobs, metric, goal, report)))
        rate = self.max_failure_rate
        if rate is None:
            rate = config.hydra.sweeper.get("max_failure_rate") or 0.0
        failed = len(failed_jobs(jobs))
        if failed and failed > rate * len(jobs):
            search = "n_trials" in config.hydra.sweeper
            print(failure_line(jobs, search, rate, sweep_dir), file=sys.stderr)
            raise SystemExit(1)
