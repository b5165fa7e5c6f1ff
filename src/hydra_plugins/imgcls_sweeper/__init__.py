"""Optuna in imgcls (docs/workflow.md): hydra-optuna-sweeper's sweeper with one failure rate over
the whole search, the study's storage, failed jobs as failed trials (optuna loads with a search)."""

import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from imgcls.utils.checks import read_json


def optuna_storage(url: str, **engine_kwargs: Any) -> Any:
    """``hydra.sweeper.storage``: SQLite autocommits (Optuna 2.x never commits its schema)."""
    import optuna
    import sqlalchemy

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if int(sqlalchemy.__version__.split(".")[0]) >= 2:
            engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or None)


class FailedTrialsToOptuna(Callback):
    """A failed job's NaN becomes ``failed: <error>``: a failed trial (NaN crashes the sweeper)."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        value = job_return.return_value
        if (
            job_return.status == JobStatus.COMPLETED
            and isinstance(value, float)
            and math.isnan(value)
        ):
            error = read_json(Path(config.hydra.runtime.output_dir) / "status.json").get("error")
            job_return.return_value = f"failed: {error or 'the objective is NaN'}"


try:  # the `sweep` extra; without it Hydra must not warn about this plugin at every start
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hparams_search=... then names the missing plugin in Hydra's own error
    OptunaSweeper = None

if OptunaSweeper is not None:

    class OptunaSearch(OptunaSweeper):
        def __init__(self, max_failure_rate: float, **options: Any) -> None:
            # the plugin applies its max_failure_rate per batch of n_jobs trials and only logs;
            # imgcls.sweeps.SweepSummary applies this one to the whole search and exits 1
            super().__init__(max_failure_rate=1.0, **options)

        def sweep(self, arguments: list[str]) -> None:
            try:
                super().sweep(arguments)
            except ValueError:  # Optuna's "Record does not exist": the best of no completed trial
                import optuna

                study = optuna.load_study(
                    study_name=self.sweeper.study_name, storage=self.sweeper.storage
                )
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    raise
