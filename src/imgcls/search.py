"""Optuna searches (docs/workflow.md): the study's storage and failed jobs as failed trials."""

import math
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from imgcls.utils.checks import read_json


def optuna_storage(url: str, **engine_kwargs: Any) -> optuna.storages.RDBStorage:
    """``hydra.sweeper.storage``: SQLite autocommits (Optuna 2.x never commits its schema)."""
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
