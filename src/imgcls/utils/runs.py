"""Shared plumbing of the entry points: config printing, seeding, error reporting, metrics."""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from imgcls.run_dir import RunDir, keys_under
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)


def quiet_other_ranks() -> None:
    """In DDP child processes imgcls logs warnings only, so each message appears once."""
    if rank_zero_only.rank != 0:
        logging.getLogger("imgcls").setLevel(logging.WARNING)


class _DropAdvertising(logging.Filter):
    """Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines: advertising, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def quiet_libraries() -> None:
    """No advertising tips of the libraries underneath (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertising) for f in logger.filters):
            logger.addFilter(_DropAdvertising())


def apply_extras(cfg: DictConfig) -> None:
    """Before a task: no library tips (``imgcls.cli`` printed the config before torch loaded;
    Python's own ``PYTHONWARNINGS=ignore`` silences warnings, no process-wide filter here)."""
    quiet_libraries()


#: a seed drawn for ``seed=null``, handed to the processes Lightning launches for DDP ranks 1..
DRAWN_SEED_ENV = "IMGCLS_DRAWN_SEED"


def ensure_seed(cfg: DictConfig) -> int:
    """The run's seed; a null seed is replaced by a random one, recorded in the config.

    The draw happens once, in the process the user started: Lightning starts the other DDP
    ranks by running the command line again with a copy of this environment, and they take the
    drawn seed from it, so every rank splits the data the same way. A rank that was not started
    that way (``torchrun``, SLURM tasks) cannot share the draw and asks for an explicit seed.
    """
    if cfg.get("seed") is None:
        if rank_zero_only.rank == 0:
            seed = random.SystemRandom().randrange(2**31)
            os.environ[DRAWN_SEED_ENV] = str(seed)
        elif DRAWN_SEED_ENV in os.environ:
            seed = int(os.environ[DRAWN_SEED_ENV])
        else:
            raise UserError(
                "seed=null draws a different seed in every process of this distributed run, so "
                "each rank would split the data differently; set seed=<integer>"
            )
        with open_dict(cfg):
            cfg.seed = seed
    return int(cfg.seed)


def explicit_overrides(prefix: str) -> set[str]:
    """Keys under ``prefix`` that the user set on the command line."""
    if not HydraConfig.initialized():
        return set()
    return keys_under(HydraConfig.get().overrides.task, prefix)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node and "_target_" in node]


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def run_dir(cfg: DictConfig) -> RunDir:
    """This run's dir (``paths.output_dir``)."""
    return RunDir(cfg.paths.output_dir)


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


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


#: what gloo and NCCL report when another process of the run is gone or stopped answering
_LOST_PROCESS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Timed out waiting",
    "collective operation timeout",
    "communicator was aborted",
)


def lost_process_error(err: BaseException) -> UserError | None:
    """In a distributed run, the error a process gets when another one died or hung, as one line.

    A killed process closes its connections, so the others fail at their next collective; a node
    that vanished or hangs is noticed after the strategy's ``timeout`` (``trainer=ddp``: 30 min).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    text = str(err)
    from_backend = isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text
    if not (from_backend and any(s in text for s in _LOST_PROCESS)):
        return None
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0]  # gloo's source prefix
    return UserError(
        f"another process of this {dist.get_world_size()}-process run is gone (its node died, "
        f"was killed or lost the network), so rank {dist.get_rank()} stops too ({detail}); "
        "the run dir keeps its last checkpoint: resume the run (docs/workflow.md, Clusters)"
    )


def report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Expected failures become one clear line and exit code 2 instead of a traceback.

    In a multirun every failure (bad value, NaN loss, out of memory, a bug) is recorded in the
    job's run dir and the job returns NaN so the sweep goes on (the Optuna configs turn it into a
    failed trial with ``imgcls.sweeps.FailedTrialsToOptuna``).
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        # the dir the run's status and metrics go to (paths.output_dir), when it resolves
        output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
        run = RunDir(output_dir) if output_dir else None
        try:
            return task(cfg)
        except Exception as raised:
            err = lost_process_error(raised) or user_facing(raised)
            expected = isinstance(err, (UserError, MisconfigurationException))
            message = one_line(err)
            if not expected:
                message = f"{type(err).__name__}: {message}"
            if run is not None and rank_zero_only.rank == 0:
                run.write_error(message, traceback.format_exc())
            if is_multirun():
                log.error(f"job failed, the sweep goes on: {message}")
                return float("nan")
            if not expected:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
