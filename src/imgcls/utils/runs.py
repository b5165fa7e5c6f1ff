"""Shared plumbing of the entry points: config printing, seeding, error reporting, metrics."""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

PRINT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the composed config as a rich tree (top-level groups first)."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(str(key), style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def quiet_other_ranks() -> None:
    """In DDP child processes imgcls logs warnings only, so each message appears once."""
    if rank_zero_only.rank != 0:
        logging.getLogger("imgcls").setLevel(logging.WARNING)


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config") and rank_zero_only.rank == 0:
        print_config_tree(cfg)


def ensure_seed(cfg: DictConfig) -> int:
    """The run's seed; a null seed is replaced by a random one, recorded in the config."""
    if cfg.get("seed") is None:
        with open_dict(cfg):
            cfg.seed = random.SystemRandom().randrange(2**31)
    return int(cfg.seed)


def explicit_overrides(prefix: str) -> set[str]:
    """Keys under ``prefix`` that the user set on the command line."""
    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith(prefix + "."):
            keys.add(key[len(prefix) + 1 :])
    return keys


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@rank_zero_only
def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


STATUS_FILE = "status.json"


def user_facing(err: BaseException) -> BaseException:
    """The UserError behind Hydra's instantiate/interpolation wrappers, else ``err`` itself."""
    seen = err
    while seen is not None:
        if isinstance(seen, (UserError, MisconfigurationException)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


def one_line(err: BaseException) -> str:
    """The error's message on one line; from a DataLoader worker, the worker's own message."""
    text = str(err)
    if "Original Traceback" in text:  # torch re-raises worker errors with their traceback
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(err).__name__


@rank_zero_only
def write_status(run_dir: Path, status: str, **details: Any) -> None:
    """Record ``running`` / ``completed`` / ``failed`` (with details and times) in the run dir."""
    now = time.time()
    started = now if status == "running" else read_status(run_dir).get("started_at", now)
    times = (
        {"started_at": started}
        if status == "running"
        else {"started_at": started, "finished_at": now}
    )
    write_json(Path(run_dir) / STATUS_FILE, {"status": status, **times, **details})


def read_status(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Expected failures become one clear line and exit code 2 instead of a traceback.

    In a multirun every failure (bad value, NaN loss, out of memory, a bug) is recorded in the
    job's run dir and the job returns NaN so the sweep goes on (the Optuna configs turn it into a
    failed trial with ``imgcls.report.FailedTrialsToOptuna``).
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
        try:
            return task(cfg)
        except Exception as raised:
            from imgcls.utils.cluster_training import lost_process_error  # it imports this module

            err = lost_process_error(raised) or user_facing(raised)
            expected = isinstance(err, (UserError, MisconfigurationException))
            message = one_line(err)
            if not expected:
                message = f"{type(err).__name__}: {message}"
            if run_dir is not None:
                write_status(run_dir, "failed", error=message)
                (run_dir / "error.txt").write_text(traceback.format_exc())
            if is_multirun():
                log.error(f"job failed, the sweep goes on: {message}")
                return float("nan")
            if not expected:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
