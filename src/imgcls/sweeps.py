"""``SweepSummary``: the Hydra callback every multirun ends with (configs/hydra/default.yaml)."""

import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

MAX_LISTED_FAILURES = 5  # the report has them all
CLOCK_SLACK_S = 1.0  # file times may trail the clock by this much


def described(job: Any) -> str:
    return f"{job.path.name} ({' '.join(f'{k}={v}' for k, v in job.overrides.items())})"


class SweepSummary(Callback):
    def __init__(self, max_failure_rate: float | None = None) -> None:
        self.max_failure_rate = max_failure_rate
        self.started_at = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_at = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from imgcls.report import OVERRIDES_FILE, RESULTS_MD, ReportError, build_report
        from imgcls.utils.checks import read_json

        sweep_dir, sweeper = Path(config.hydra.sweep.dir), config.hydra.sweeper
        try:
            runs, report = build_report([sweep_dir]).runs, sweep_dir / RESULTS_MD
        except ReportError as err:
            runs, report = [], f"none ({err})"
        since = self.started_at - CLOCK_SLACK_S
        # this call's jobs: Hydra wrote their overrides since it started (not an earlier call's)
        jobs = [r for r in runs if (r.path / OVERRIDES_FILE).is_file()]
        jobs = [r for r in jobs if (r.path / OVERRIDES_FILE).stat().st_mtime >= since]
        for job in jobs:
            if job.status in ("running", "unknown"):  # died without saying why (killed, OOM)
                job.status = "unfinished"
            finished_at = read_json(job.path / "status.json").get("finished_at", since)
            if job.status == "completed" and finished_at < since:
                job.status = "skipped"  # finished by an earlier call (resume=true)
        counts = Counter(dict.fromkeys(["completed", "failed", "skipped"], 0))
        counts.update(job.status for job in jobs)
        lines = [f"sweep: {len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
        metric, goal = config.get("optimized_metric"), sweeper.get("direction")
        if not isinstance(goal, str):  # not the Optuna sweeper's: minimise losses only
            goal = "minimize" if "loss" in (metric or "") else "maximize"
        scored = [j for j in jobs if j.status in ("completed", "skipped")]
        scored = [j for j in scored if math.isfinite(j.metrics.get(metric or "", math.nan))]
        if scored:
            best = (max if goal == "maximize" else min)(scored, key=lambda j: j.metrics[metric])
            lines.append(f"best {metric}: {best.metrics[metric]:.4f} (job {described(best)})")
        elif metric:
            lines.append(f"best {metric}: none (no job finished with it)")
        failed = [j for j in jobs if j.status not in ("completed", "skipped")]
        for job in failed[:MAX_LISTED_FAILURES]:
            reason = (job.error or "no error recorded (killed?)")[:160]
            lines.append(f"  {job.status} job {described(job)}: {reason}")
        if len(failed) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(failed) - MAX_LISTED_FAILURES} more (see the report)")
        print("\n".join([*lines, f"report: {report}"]))
        rate = self.max_failure_rate
        rate = sweeper.get("max_failure_rate") or 0.0 if rate is None else rate
        if failed and len(failed) > rate * len(jobs):
            search, traceback = "n_trials" in sweeper, failed[0].path / "traceback.txt"
            print(
                f"error: {len(failed)} of {len(jobs)} {'trials' if search else 'sweep jobs'} "
                "failed "
                f"({f'at most {rate:.0%} allowed' if rate else 'none allowed'}): "
                f"{', '.join(j.path.name for j in failed)}; first error: "
                f"{failed[0].error or 'none recorded (killed?)'}"
                f"{f' (traceback: {traceback})' if traceback.is_file() else ''}; fix it and "
                f"{'continue the study with' if search else 'rerun with resume=true'} "
                f"hydra.sweep.dir={sweep_dir}",
                file=sys.stderr,
            )
            raise SystemExit(1)
