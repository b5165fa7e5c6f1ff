"""Optuna searches (configs/hparams_search) through hydra-optuna-sweeper.

- ``optuna_storage``: the study storage that works with the SQLAlchemy 2 installed next to
  Optuna 2;
- ``run_search``: the sweep of ``hydra_plugins.imgcls_sweeper.OptunaSearch``, the plugin's sweeper
  with imgcls's checks: it first refuses, in one line, a search over a key the
  composed config lacks (say ``model.net.dropout`` with ``model=resnet18``), and lets a study in
  which no trial completed end normally (the plugin would raise Optuna's ``ValueError: Record
  does not exist`` reading its best trial); ``imgcls.sweeps.SweepSummary`` then fails the search
  when more than ``hydra.sweeper.max_failure_rate`` of its trials failed;
- ``FailedTrialsToOptuna``: a Hydra callback that turns a failed job's NaN into a failed Optuna
  trial instead of a crash.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgcls.run_dir import Override, RunDir

_MISSING = object()


def optuna_storage(url: str, **engine_kwargs: Any) -> optuna.storages.RDBStorage:
    """An Optuna ``RDBStorage`` for ``hydra.sweeper.storage`` that works with SQLAlchemy 2.

    Optuna 2.x (the version hydra-optuna-sweeper 1.x allows) stamps its schema on a connection
    that it never commits; SQLAlchemy 2 no longer autocommits, so a plain ``sqlite:///`` URL
    fails (``AssertionError`` / ``database is locked``). SQLite connections here run in
    autocommit mode instead; the sweeper is the only writer of the study. The SQLite file's
    directory (the sweep dir, before Hydra creates it) is created first.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if int(sqlalchemy.__version__.split(".")[0]) >= 2:
            engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or None)


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


def run_search(sweeper: Any, sweep: Callable[[list[str]], None], arguments: list[str]) -> None:
    """Run the plugin's ``sweep`` for ``hydra_plugins.imgcls_sweeper.OptunaSearch`` (see above)."""
    message = missing_search_key(sweeper.config)
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    try:
        sweep(arguments)
    except ValueError:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            raise  # not the best trial of a study without one


class FailedTrialsToOptuna(Callback):
    """Hydra callback: a job that returned NaN returns its error message instead.

    A failed job returns NaN so that the sweep goes on. The Optuna sweeper (hydra-optuna-sweeper
    1.3 with Optuna 2.x) crashes on NaN: ``study.tell`` rejects it and its fallback then tells a
    failed trial together with the value, which Optuna rejects too. A value that is not a number
    is recorded as a failed trial (``TrialState.FAIL``) and logged as ``Failed experiment: ...
    Got 'failed: <error>'``, and the sweep goes on.
    """

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if job_return.status != JobStatus.COMPLETED:
            return
        value = job_return.return_value
        if isinstance(value, float) and math.isnan(value):
            run = RunDir(config.hydra.runtime.output_dir)
            error = run.status().get("error") or "the objective is NaN"
            job_return.return_value = f"failed: {error}"
