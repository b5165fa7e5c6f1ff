"""``SweepSummary``, the Hydra callback every multirun ends with (configs/hydra/default.yaml).

It prints one screen (jobs completed / failed / skipped, the best ``optimized_metric``, where the
report is) and exits 1 when more than ``max_failure_rate`` of the jobs failed (default: the
sweeper's ``hydra.sweeper.max_failure_rate``, else 0), with one line naming the failed jobs, the
first error and its traceback file. The Optuna pieces are in ``imgcls.search``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imgcls.run_dir import ERROR_FILE, RunDir, find_run_dirs

#: at most this many failed jobs are listed (with their error); the report has them all
MAX_LISTED_FAILURES = 5
#: file times may trail the clock by this much (coarse file systems)
CLOCK_SLACK_S = 1.0
#: where a failed run keeps its traceback (the life cycle's ``traceback.txt``, formerly error.txt)
TRACEBACK_FILES = ("traceback.txt", ERROR_FILE)


@dataclass
class Job:
    run: RunDir
    status: str  # completed, skipped, failed, interrupted, unfinished
    info: dict[str, Any]  # its status.json

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def error(self) -> str:
        return self.info.get("error", "")

    def metric(self, name: str) -> float | None:
        value = (self.info.get("metrics") or {}).get(name)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def jobs_of_this_sweep(sweep_dir: Path, started_at: float) -> list[Job]:
    """Jobs Hydra started since ``started_at`` (``time.time()``; their ``.hydra/`` is written when
    they start): the dirs of an earlier call in the same sweep dir (a continued study) are not."""
    jobs = []
    for run in find_run_dirs([sweep_dir]):
        if run.started_at_file_time() < started_at - CLOCK_SLACK_S:
            continue
        info = run.status()
        status = info.get("status", "unfinished")
        if status == "running":
            status = "unfinished"  # the job died without recording why (killed, out of memory)
        if (
            status == "completed"
            and info.get("finished_at", started_at) < started_at - CLOCK_SLACK_S
        ):
            status = "skipped"  # finished by an earlier call (resume=true)
        jobs.append(Job(run, status, info))
    return sorted(jobs, key=lambda j: (len(j.name), j.name))


def summary_lines(jobs: list[Job], failed: list[Job], metric: str | None, goal: str) -> list[str]:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "skipped")}
    counts |= {s: sum(j.status == s for j in jobs) for s in sorted({j.status for j in jobs})}
    lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    done = [j for j in jobs if j.status in ("completed", "skipped")]
    scored = [j for j in done if metric and j.metric(metric) is not None]
    if scored:
        best = (max if goal == "maximize" else min)(scored, key=lambda j: j.metric(metric))
        overrides = " ".join(best.run.overrides()) or "no overrides"
        lines.append(f"best {metric}: {best.metric(metric):.4f} (job {best.name}: {overrides})")
    elif metric:
        lines.append(f"best {metric}: none (no job finished with it)")
    for job in failed[:MAX_LISTED_FAILURES]:
        reason = (job.error or "no error recorded (killed?)")[:160]
        lines.append(f"  {job.status} job {job.name} ({' '.join(job.run.overrides())}): {reason}")
    if len(failed) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(failed) - MAX_LISTED_FAILURES} more (see the report)")
    return lines


def failure_line(jobs: list[Job], failed: list[Job], rate: float, search: bool, sweep_dir: Path):
    """``error: ...`` naming the failed jobs, the first error and where its traceback is."""
    first = failed[0]
    tracebacks = [p for p in map(first.run.path.joinpath, TRACEBACK_FILES) if p.is_file()]
    where = f" (traceback: {tracebacks[0]})" if tracebacks else ""
    allowed = f"at most {rate:.0%} allowed" if rate else "none allowed"
    again = "continue the study with" if search else "rerun with resume=true"
    return (
        f"error: {len(failed)} of {len(jobs)} {'trials' if search else 'sweep jobs'} failed "
        f"({allowed}): {', '.join(j.name for j in failed)}; first error: "
        f"{first.error or 'none recorded (killed?)'}{where}; fix it and {again} "
        f"hydra.sweep.dir={sweep_dir}"
    )


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome; exit 1 when more than ``max_failure_rate`` of
    its jobs failed (``None``: the sweeper's, else 0)."""

    def __init__(self, max_failure_rate: float | None = None) -> None:
        self.max_failure_rate = max_failure_rate
        self.started_at = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_at = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # imported here: the report (scipy, matplotlib) is loaded only when a multirun ends
        from imgcls.report import RESULTS_MD, ReportError, build_report

        sweep_dir, sweeper = Path(config.hydra.sweep.dir), config.hydra.sweeper
        jobs = jobs_of_this_sweep(sweep_dir, self.started_at)
        failed = [j for j in jobs if j.status not in ("completed", "skipped")]
        metric = config.get("optimized_metric")
        goal = sweeper.get("direction")  # the Optuna sweeper's, else minimise losses only
        if not isinstance(goal, str):
            goal = "minimize" if "loss" in (metric or "") else "maximize"
        try:
            build_report([sweep_dir])
            report = str(sweep_dir / RESULTS_MD)
        except ReportError as err:
            report = f"none ({err})"
        print("\n".join([*summary_lines(jobs, failed, metric, goal), f"report: {report}"]))
        rate = self.max_failure_rate
        if rate is None:
            rate = sweeper.get("max_failure_rate") or 0.0
        if failed and len(failed) > rate * len(jobs):
            search = "n_trials" in sweeper
            print(failure_line(jobs, failed, rate, search, sweep_dir), file=sys.stderr)
            raise SystemExit(1)
