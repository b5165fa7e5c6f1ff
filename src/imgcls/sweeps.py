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
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

#: at most this many failed jobs are listed (with their error); the report has them all
MAX_LISTED_FAILURES = 5
#: file times may trail the clock by this much (coarse file systems)
CLOCK_SLACK_S = 1.0
#: where a failed run keeps its traceback (the life cycle's ``traceback.txt``, formerly error.txt)
TRACEBACK_FILES = ("traceback.txt",)


def this_sweep(runs: list[Any], started_at: float) -> list[Any]:
    """The report's runs (``imgcls.report.Run``) that Hydra started since ``started_at`` (their
    ``.hydra/`` is written when they start; not those of an earlier call in the same sweep dir),
    with their status as the sweep sees it."""
    from imgcls.lifecycle import RunDir  # at a multirun's end: Lightning is loaded by then

    jobs = []
    for run in runs:
        run_dir = RunDir(run.path)
        if run_dir.started_at_file_time() < started_at - CLOCK_SLACK_S:
            continue
        if run.status in ("running", "unknown"):
            run.status = "unfinished"  # the job died without recording why (killed, out of memory)
        finished_at = run_dir.status().get("finished_at", started_at)
        if run.status == "completed" and finished_at < started_at - CLOCK_SLACK_S:
            run.status = "skipped"  # finished by an earlier call (resume=true)
        jobs.append(run)
    return sorted(jobs, key=lambda r: (len(r.path.name), r.path.name))


def overrides(run: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in run.overrides.items())


def summary_lines(jobs: list[Any], failed: list[Any], metric: str | None, goal: str) -> list[str]:
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "skipped")}
    counts |= {s: sum(j.status == s for j in jobs) for s in sorted({j.status for j in jobs})}
    lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    done = [j for j in jobs if j.status in ("completed", "skipped")]
    scored = [j for j in done if math.isfinite(j.metrics.get(metric or "", math.nan))]
    if scored:
        best = (max if goal == "maximize" else min)(scored, key=lambda j: j.metrics[metric])
        job = f"{best.path.name}: {overrides(best) or 'no overrides'}"
        lines.append(f"best {metric}: {best.metrics[metric]:.4f} (job {job})")
    elif metric:
        lines.append(f"best {metric}: none (no job finished with it)")
    for job in failed[:MAX_LISTED_FAILURES]:
        reason = (job.error or "no error recorded (killed?)")[:160]
        lines.append(f"  {job.status} job {job.path.name} ({overrides(job)}): {reason}")
    if len(failed) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(failed) - MAX_LISTED_FAILURES} more (see the report)")
    return lines


def failure_line(jobs: list[Any], failed: list[Any], rate: float, search: bool, sweep_dir: Path):
    """``error: ...`` naming the failed jobs, the first error and where its traceback is."""
    first = failed[0]
    tracebacks = [p for p in map(first.path.joinpath, TRACEBACK_FILES) if p.is_file()]
    where = f" (traceback: {tracebacks[0]})" if tracebacks else ""
    allowed = f"at most {rate:.0%} allowed" if rate else "none allowed"
    again = "continue the study with" if search else "rerun with resume=true"
    return (
        f"error: {len(failed)} of {len(jobs)} {'trials' if search else 'sweep jobs'} failed "
        f"({allowed}): {', '.join(j.path.name for j in failed)}; first error: "
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
        try:
            runs, report = build_report([sweep_dir]).runs, str(sweep_dir / RESULTS_MD)
        except ReportError as err:
            runs, report = [], f"none ({err})"
        jobs = this_sweep(runs, self.started_at)
        failed = [j for j in jobs if j.status not in ("completed", "skipped")]
        metric = config.get("optimized_metric")
        goal = sweeper.get("direction")  # the Optuna sweeper's, else minimise losses only
        if not isinstance(goal, str):
            goal = "minimize" if "loss" in (metric or "") else "maximize"
        print("\n".join([*summary_lines(jobs, failed, metric, goal), f"report: {report}"]))
        rate = self.max_failure_rate
        if rate is None:
            rate = sweeper.get("max_failure_rate") or 0.0
        if failed and len(failed) > rate * len(jobs):
            search = "n_trials" in sweeper
            print(failure_line(jobs, failed, rate, search, sweep_dir), file=sys.stderr)
            raise SystemExit(1)
