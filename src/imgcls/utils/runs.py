"""Shared plumbing of the entry points: config printing, seeding, error reporting, metrics."""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

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


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
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


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn expected failures into one clear line and exit code 2 instead of a traceback."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except (UserError, MisconfigurationException) as err:
            message = " ".join(str(err).split())
            if HydraConfig.initialized():
                run_dir = Path(HydraConfig.get().runtime.output_dir)
                (run_dir / "error.txt").write_text(message + "\n")
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
