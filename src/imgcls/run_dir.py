"""The run dir: its file names, how it is read and written, and how a run continues in it.

Every run (single or a sweep job) leaves one dir::

    .hydra/overrides.yaml   the command-line overrides it was started with (Hydra writes it)
    config.yaml             the fully resolved config
    status.json             running / completed (with metrics) / failed (with the error)
    metrics.json            the final metrics, and under "sources" where each comes from
    traceback.txt           the traceback of a failed run (status.json has its one-line error)
    checkpoints/last.ckpt   written after every epoch: what ``resume=`` continues from

This module is the only code that knows these names; ``train.py``, the checkpoint callback
(``imgcls.lifecycle``), the sweeps and ``imgcls-report`` go through it. It imports
neither torch nor Lightning, so the report stays quick to start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
ERROR_FILE = "traceback.txt"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_NAME = "last"  # Lightning adds ".ckpt"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / f"{LAST_CHECKPOINT_NAME}.ckpt"
#: what Lightning's SLURM auto-requeue saves in the run dir (trainer.default_root_dir)
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"
#: the status of a run SLURM requeued: the job comes back by itself and continues
REQUEUED = "requeued"

#: command-line keys that say how a run was started, not what it computes
START_KEYS = ("resume", "ckpt_path")
NULLS = ("null", "none", "")


# ---------------------------------------------------------------------------------- overrides
@dataclass(frozen=True)
class Override:
    """One ``key=value`` command-line override; ``prefix`` is ``+``, ``++``, ``~`` or empty."""

    key: str
    value: str | None
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Override:
        head, sep, value = str(text).partition("=")
        key = head.lstrip("+~")
        return cls(key=key, value=value if sep else None, prefix=head[: len(head) - len(key)])

    @property
    def deletes(self) -> bool:
        return self.prefix == "~"


def parse_overrides(args: Iterable[str]) -> list[Override]:
    """The ``key=value`` arguments of a command line (flags such as ``-m`` are left out)."""
    return [Override.parse(a) for a in args if "=" in a and not a.startswith("-")]


def keys_under(overrides: Iterable[str], prefix: str) -> set[str]:
    """Keys below ``prefix.`` that ``overrides`` set, without the prefix: ``trainer.devices``
    -> ``devices``."""
    start = prefix + "."
    return {o.key[len(start) :] for o in parse_overrides(overrides) if o.key.startswith(start)}


# ---------------------------------------------------------------------------------- one run dir
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when the file is missing or half-written."""
    try:
        payload = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}
    return payload if isinstance(payload, dict) else {}


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` atomically: a reader (another process, the report) never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


@dataclass(frozen=True)
class RunDir:
    """A run dir on disk: everything imgcls reads from it or writes into it."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ---- reading
    def exists(self) -> bool:
        """Whether ``path`` holds a run (Hydra's overrides or imgcls's resolved config)."""
        return (self.path / OVERRIDES_FILE).is_file() or (self.path / CONFIG_FILE).is_file()

    def overrides(self) -> list[str]:
        """The command-line overrides the run was started with."""
        path = self.path / OVERRIDES_FILE
        items = yaml.safe_load(path.read_text()) if path.is_file() else None
        return [str(item) for item in items or []]

    def config(self) -> dict[str, Any]:
        """The resolved config (empty when missing or unreadable)."""
        path = self.path / CONFIG_FILE
        try:
            config = yaml.safe_load(path.read_text()) if path.is_file() else None
        except yaml.YAMLError:
            return {}
        return config if isinstance(config, dict) else {}

    def status(self) -> dict[str, Any]:
        return read_json(self.path / STATUS_FILE)

    def metrics(self) -> dict[str, Any]:
        """The final metrics: ``metrics.json``, else those recorded with the status."""
        return read_json(self.path / METRICS_FILE) or self.status().get("metrics") or {}

    def started_at_file_time(self) -> float:
        """When Hydra started the job: the time its overrides file was written (0: never)."""
        path = self.path / OVERRIDES_FILE
        return path.stat().st_mtime if path.is_file() else 0.0

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def latest_checkpoint(self) -> Path | None:
        """The newest state the run holds: ``last.ckpt`` or a SLURM requeue's ``hpc_ckpt_<n>``."""
        candidates = [self.last_checkpoint, *self.path.glob(HPC_CHECKPOINTS)]
        existing = [path for path in candidates if path.is_file()]
        return max(existing, key=lambda path: path.stat().st_mtime_ns, default=None)

    def wall_time(self) -> float | None:
        """Seconds the run took: from the status times when recorded, else from file times.

        File times: from Hydra writing the overrides (job start) to the last write of the status
        or metrics. A run still running counts up to now.
        """
        status = self.status()
        if isinstance(status.get("wall_time_s"), (int, float)):
            return float(status["wall_time_s"])
        started = as_timestamp(status.get("started_at"))
        running = status.get("status") == "running"
        if started is not None:
            finished = as_timestamp(status.get("finished_at"))
            if finished is None and running:
                finished = time.time()
            return max(0.0, finished - started) if finished is not None else None
        start_file = self.path / OVERRIDES_FILE
        ends = [self.path / n for n in (STATUS_FILE, METRICS_FILE) if (self.path / n).is_file()]
        if not start_file.is_file() or not ends:
            return None
        end = time.time() if running else max(p.stat().st_mtime for p in ends)
        seconds = end - start_file.stat().st_mtime
        return seconds if seconds >= 0 else None  # negative: .hydra rewritten by a resumed sweep

    # ---- writing (the entry points call these on rank 0 only)
    def write_config(self, config: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS_FILE, metrics)

    def write_status(self, status: str, **details: Any) -> None:
        """Record ``running`` / ``completed`` / ``failed`` (with details and times)."""
        now = time.time()
        started = now if status == "running" else self.status().get("started_at", now)
        times = {"started_at": started} | ({} if status == "running" else {"finished_at": now})
        write_json(self.path / STATUS_FILE, {"status": status, **times, **details})

    def write_error(self, message: str, traceback_text: str) -> None:
        self.write_status("failed", error=message)
        (self.path / ERROR_FILE).write_text(traceback_text)


def as_timestamp(value: Any) -> float | None:
    """Unix seconds from a number or an ISO 8601 string."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def natural_key(path: Path) -> list[Any]:
    """``2`` before ``10``: numbers in names compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def find_run_dirs(roots: Iterable[Path]) -> list[RunDir]:
    """Every run dir at or below ``roots`` (not looking inside run dirs), in natural order.

    A root that is not a directory raises ``NotADirectoryError``.
    """
    found: dict[Path, None] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        if RunDir(root).exists():
            found[root.resolve()] = None
            continue
        for current, dirs, _ in os.walk(root):
            here = Path(current)
            runs = [d for d in dirs if RunDir(here / d).exists()]
            found.update(dict.fromkeys((here / d).resolve() for d in runs))
            dirs[:] = sorted(d for d in dirs if d not in runs and not d.startswith("."))
    return [RunDir(p) for p in sorted(found, key=natural_key)]


# ---------------------------------------------------------------------------------- resuming
def finished_metrics(run: RunDir) -> dict[str, float] | None:
    """A sweep job under ``resume=true``: its recorded metrics if it already completed."""
    status = run.status()
    if status.get("status") == "completed":
        log.info(f"{run.path} already completed: skipped (resume=true)")
        return status.get("metrics", {})
    return None


def log_start(ckpt_path: str | Path, run: RunDir) -> bool:
    """Say where training starts from: this run's own checkpoint (True: it continues), or another
    run's (False: a new run starting from that state)."""
    source = Path(ckpt_path).resolve()
    origin = RunDir(source.parent.parent)
    if source.is_relative_to(run.path.resolve()):  # checkpoints/ or a requeue's hpc_ckpt_<n>
        log.info(f"continuing {run.path} from {source}")
        return True
    message = f"ckpt_path={source}: a new run in {run.path}, starting from that checkpoint"
    if source.parent.name == CHECKPOINT_DIR and origin.exists():
        message += f" (resume={origin.path} would continue that run in its own dir instead)"
    log.info(message)
    return False
