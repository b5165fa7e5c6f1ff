"""Sweep machinery for the ``hparams_search`` configs (Optuna through hydra-optuna-sweeper).

- ``optuna_storage``: the study storage that works with the SQLAlchemy 2 installed next to
  Optuna 2;
- ``FailedTrialsToOptuna``: a Hydra callback that turns a failed job's NaN into a failed Optuna
  trial instead of a crash;
- ``SearchSpaceCheck``: a Hydra callback that refuses, in one line and before any trial, a search
  over a key the composed config does not have (say ``model.net.dropout`` with ``model=resnet18``);
- ``SweepSummary``: a Hydra callback ending every multirun with one screen (jobs completed /
  failed / skipped, the best ``optimized_metric``, the report) and exit 1 when a job failed.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgcls.run_dir import Override, RunDir, find_run_dirs

_MISSING = object()


def optuna_storage(url: str, **engine_kwargs: Any) -> Any:
    """An Optuna ``RDBStorage`` for ``hydra.sweeper.storage`` that works with SQLAlchemy 2.

    Optuna 2.x (the version hydra-optuna-sweeper 1.x allows) stamps its schema on a connection
    that it never commits; SQLAlchemy 2 no longer autocommits, so a plain ``sqlite:///`` URL
    fails (``AssertionError`` / ``database is locked``). SQLite connections here run in
    autocommit mode instead; the sweeper is the only writer of the study. The SQLite file's
    directory (the sweep dir, before Hydra creates it) is created first.
    """
    import sqlalchemy
    from optuna.storages import RDBStorage

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if int(sqlalchemy.__version__.split(".")[0]) >= 2:
            engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    return RDBStorage(url, engine_kwargs=engine_kwargs or None)


class FailedTrialsToOptuna(Callback):
    """Hydra callback: a job that returned NaN returns its error message instead.

    ``report_errors`` makes a failed job return NaN so that the sweep goes on. The Optuna
    sweeper (hydra-optuna-sweeper 1.3 with Optuna 2.x) crashes on NaN: ``study.tell`` rejects it
    and its fallback then tells a failed trial together with the value, which Optuna rejects
    too. A value that is not a number is recorded as a failed trial (``TrialState.FAIL``) and
    logged as ``Failed experiment: ... Got 'failed: <error>'``, and the sweep goes on.
    """

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED:
            return
        value = job_return.return_value
        if isinstance(value, float) and math.isnan(value):
            run = RunDir(config.hydra.runtime.output_dir)
            error = run.status().get("error") or "the objective is NaN"
            job_return.return_value = f"failed: {error}"


def missing_search_key(config: DictConfig) -> str | None:
    """A one-line message for the first searched key that the composed config lacks."""
    for name in config.hydra.sweeper.get("params") or {}:
        key = Override.parse(name).key
        if "/" in key or name.startswith("+"):  # a config group choice, or a key it appends
            continue
        if OmegaConf.select(config, key, default=_MISSING) is _MISSING:
            group = key.split(".", 1)[0]
            choice = config.hydra.runtime.choices.get(group)
            owner = f"{group}={choice}" if choice else "the composed config"
            return (
                f"hparams_search searches {key}, which {owner} does not have; "
                f"pick a {group} that has it or search your own hydra.sweeper.params"
            )
    return None


class SearchSpaceCheck(Callback):
    """Hydra callback: a search over a key the config lacks stops before the first trial."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        message = missing_search_key(config)
        if message:
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2)


# ------------------------------------------------------------------------- sweep summary
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


def read_job(run: RunDir, started_at: float) -> Job:
    """The outcome of one job of a sweep that started at ``started_at`` (``time.time()``)."""
    status = run.status()
    state = status.get("status", "unfinished")
    if state == "running":
        state = "unfinished"  # the job died without recording why (killed, out of memory)
    if state == "completed" and status.get("finished_at", started_at) < started_at - CLOCK_SLACK_S:
        state = "skipped"  # finished by an earlier call (resume=true)
    metrics, error = status.get("metrics") or {}, status.get("error", "")
    return Job(run.path.name, run.overrides(), state, metrics, error)


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
