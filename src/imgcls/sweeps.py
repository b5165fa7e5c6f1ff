"""Sweep machinery for the ``hparams_search`` configs (Optuna through hydra-optuna-sweeper).

- ``optuna_storage``: the study storage that works with the SQLAlchemy 2 installed next to
  Optuna 2;
- ``FailedTrialsToOptuna``: a Hydra callback that turns a failed job's NaN into a failed Optuna
  trial instead of a crash;
- ``SearchSpaceCheck``: a Hydra callback that refuses, in one line and before any trial, a search
  over a key the composed config does not have (say ``model.net.dropout`` with ``model=resnet18``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgcls.run_dir import Override, RunDir

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
