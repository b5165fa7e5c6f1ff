"""Plumbing the entry points share: overrides, atomic JSON, relocated configs, one-line errors."""

import contextlib
import functools
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: what gloo and NCCL report when another process of the run is gone or stopped answering
LOST_PROCESS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                "Timed out waiting", "collective operation timeout",
                "communicator was aborted")  # fmt: skip

#: Lightning's warnings on every run, news to no one: a new run has no checkpoint for an
#: OnExceptionCheckpoint to resume from; its pytree helper calls what torch 2.10+ deprecates
LIGHTNING_NOISE = (r"`.fit\(ckpt_path=None\)` was called without a model",
                   r'.fit\(ckpt_path="last"\) is set, but there is no last checkpoint',
                   r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # fmt: skip


@contextlib.contextmanager
def quiet_lightning(*messages: str) -> Iterator[None]:
    """Within: ``LIGHTNING_NOISE`` and the warnings matching ``messages`` are not shown."""
    with warnings.catch_warnings():
        for message in (*LIGHTNING_NOISE, *messages):
            warnings.filterwarnings("ignore", message=message)
        yield


def parse_overrides(args: Iterable[str]) -> list[tuple[str, str, bool]]:
    """A command line's ``key=value`` arguments as (key, value, deletes: ``~key=``); no flags."""
    pairs = [str(a).partition("=")[::2] for a in args if "=" in a and not a.startswith("-")]
    return [(key.lstrip("+~"), value, key.startswith("~")) for key, value in pairs]


def write_json(path: Path, payload: Any) -> None:
    """Written atomically: a reader (another process, the report) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


def relocated(config: Any, new_dir: Path | str) -> Any:
    """``config`` with every path below its run dir (``paths.output_dir``) moved to ``new_dir``."""
    old = str((config.get("paths") or {}).get("output_dir") or "")

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        if old and isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return str(new_dir) + value[len(old) :]
        return value

    return moved(config)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def instantiate_list(cfg: Mapping[str, Any] | None) -> list[Any]:
    """Every ``_target_`` entry of a config group (callbacks, loggers), instantiated."""
    return [instantiate(node) for node in (cfg or {}).values() if node and "_target_" in node]


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def no_tips(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip: try installing litlogger" lines, its note on our model summary."""
    message = record.getMessage()  # formatted once, not per phrase
    return not any(s in message for s in ("💡 Tip", "already configured with model"))


def apply_extras(cfg: Any = None) -> None:
    """Before a task: no library tips; DDP ranks other than 0 log imgcls's warnings only."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_tips)  # once: addFilter skips one already there
    if rank_zero_only.rank != 0:
        logging.getLogger("imgcls").setLevel(logging.WARNING)


def one_line(err: BaseException) -> str:
    """The error's message on one line; from a DataLoader worker, the worker's own message."""
    text = str(err)
    if "Original Traceback" in text:  # torch re-raises worker errors with their traceback
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(err).__name__


def lost_process_error(err: BaseException) -> UserError | None:
    """In a distributed run, the error a process gets when another one died or hung, one line."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    text = str(err)
    from_backend = isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text
    if not (from_backend and any(s in text for s in LOST_PROCESS)):
        return None
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0]  # gloo's source prefix
    return UserError(
        f"another process of this {dist.get_world_size()}-process run is gone (its node died, "
        f"was killed or lost the network), so rank {dist.get_rank()} stops too ({detail}); "
        "the run dir keeps its last checkpoint: resume the run (docs/workflow.md, Clusters)"
    )


def describe(raised: BaseException) -> tuple[str, bool]:
    """An error as one line, and whether it is an expected one (a mistake the user can fix)."""
    err: BaseException | None = lost_process_error(raised) or raised
    while err is not None and not isinstance(err, (UserError, MisconfigurationException)):
        err = err.__cause__ or err.__context__  # behind Hydra's instantiate/resolver wrappers
    if err is None:
        return f"{type(raised).__name__}: {one_line(raised)}", False
    return one_line(err), True


def report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """An expected failure: one line and exit 2; in a sweep a failed job returns NaN."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as raised:
            message, expected = describe(raised)
            if is_multirun():
                log.error(f"job failed, the sweep goes on: {message}")
                return float("nan")
            if not expected:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
