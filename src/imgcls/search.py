"""Optuna searches (configs/hparams_search) through hydra-optuna-sweeper (docs/workflow.md):
the study storage, the checks of ``hydra_plugins.imgcls_sweeper.OptunaSearch`` and the callback
that records a failed job as a failed trial."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

_MISSING = object()


def optuna_storage(url: str, **engine_kwargs: Any) -> optuna.storages.RDBStorage:
    """``hydra.sweeper.storage``: an ``RDBStorage`` that works with SQLAlchemy 2.

    Optuna 2.x (what hydra-optuna-sweeper 1.x allows) stamps its schema on a connection it never
    commits, and SQLAlchemy 2 no longer autocommits (``database is locked``): SQLite connections
    run in autocommit mode here (the sweeper is the study's only writer), in a dir made first.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if int(sqlalchemy.__version__.split(".")[0]) >= 2:
            engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or None)


def missing_search_key(config: DictConfig) -> str | None:
    """A one-line message for the first searched key that the composed config lacks."""
    for name in config.hydra.sweeper.get("params") or {}:
        key = name.lstrip("+~")
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


def completed_trials(study_name: str, storage: Any) -> int:
    """How many trials of the study completed (none: the plugin's ``ValueError`` reading the best
    trial ends the search normally; ``imgcls.sweeps.SweepSummary`` then fails it)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


class FailedTrialsToOptuna(Callback):
    """Hydra callback: a job that returned NaN (a failed job, so that the sweep goes on) returns
    ``failed: <error>`` instead, which the Optuna sweeper records as a failed trial; NaN itself
    crashes it (hydra-optuna-sweeper 1.3 with Optuna 2.x: ``study.tell`` rejects it twice)."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        value = job_return.return_value
        if (
            job_return.status == JobStatus.COMPLETED
            and isinstance(value, float)
            and math.isnan(value)
        ):
            from imgcls.lifecycle import RunDir  # the run's status (Lightning: imported late)

            error = RunDir(config.hydra.runtime.output_dir).status().get("error")
            job_return.return_value = f"failed: {error or 'the objective is NaN'}"
