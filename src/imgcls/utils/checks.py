"""Checks before any work, as a Hydra callback (configs/hydra/default.yaml): values a run cannot
use, processes that would not share a run dir, a run dir that cannot be written. They run after
Hydra composed the config and before it makes the run dir; nothing heavy (torch) is imported.

Each problem is one line, ``error: <key>=<value>: <what is wrong>; <how to fix>``, and exit code 2.
Hydra reports the config mistakes it finds itself (an unknown option, a key typo, bad syntax).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

#: what Lightning's ``Trainer(precision=...)`` accepts (its signature's Literal types)
PRECISIONS = (16, 32, 64, "16", "32", "64", "bf16", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "32-true", "64-true", "transformer-engine",
              "transformer-engine-float16")  # fmt: skip
#: how a file torch.save wrote starts: a zip archive, or a pickle (the legacy format)
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
ABSENT = object()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: key -> (the value is fine, what is wrong, how to fix)
RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "data.batch_size": (
        lambda v: _int(v) and v >= 1,
        "must be a positive integer",
        "e.g. data.batch_size=64",
    ),
    "data.eval_batch_size": (
        lambda v: v is None or (_int(v) and v >= 1),
        "must be null (= data.batch_size) or a positive integer",
        "e.g. data.eval_batch_size=1000",
    ),
    "model.optimizer.lr": (
        lambda v: _number(v) and v > 0,
        "must be a positive number",
        "e.g. model.optimizer.lr=0.01",
    ),
    "model.label_smoothing": (
        lambda v: _number(v) and 0 <= v < 1,
        "must be a number in [0, 1)",
        "e.g. model.label_smoothing=0.1 (0 = off)",
    ),
    "trainer.precision": (
        lambda v: not isinstance(v, bool) and v in PRECISIONS,
        "is not a precision Lightning knows",
        "use one of " + ", ".join(map(str, PRECISIONS[3:])),
    ),
    "trainer.max_epochs": (
        lambda v: v is None or (_int(v) and v >= -1),
        "must be an integer >= 0, or -1 for no limit",
        "e.g. trainer.max_epochs=10",
    ),
}


def _show(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return value if isinstance(value, str) else json.dumps(value)


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys left at ``???``, found without resolving interpolations (that may import torch)."""
    found = []
    for key in cfg:
        if key == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += missing_keys(cfg[key], f"{prefix}{key}.")
    return found


def _path_problem(key: str, value: Any) -> str | None:
    path = Path(str(value)).expanduser()
    if not path.exists():
        return "does not exist; check the path (relative paths start where you run the command)"
    if key == "ckpt_path" and path.is_file() and path.suffix != ".onnx":
        with path.open("rb") as file:
            head = file.read(4)
        if not head.startswith(CHECKPOINT_MAGIC):
            return "is not a checkpoint (no file torch.save wrote); give a .ckpt or a run dir"
    return None


def _select(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``; ``ABSENT`` when there is none, or it is ``???`` or unresolvable."""
    return OmegaConf.select(cfg, key, default=ABSENT, throw_on_resolution_failure=False)


def bad_value(cfg: DictConfig, required: bool = True) -> str | None:
    """The first value of ``cfg`` a run cannot use, as ``<key>=<value>: <problem>; <fix>``
    (``required``: also a ``???`` left out)."""
    for key in missing_keys(cfg) if required else ():
        return f"{key}=???: is required; add {key}=... to the command"
    for key, (ok, problem, fix) in RULES.items():
        value = _select(cfg, key)
        if value is not ABSENT and not ok(value):
            return f"{key}={_show(value)}: {problem}; {fix}"
    paths = {k: _select(cfg, k) for k in ("ckpt_path", "init_from", "resume", "data.root")}
    if paths["data.root"] is None:
        return "data.root=null: this dataset reads your image folder; add data.root=PATH"
    for key, value in paths.items():
        if isinstance(value, str) and value.lower() not in ("true", "false", "null", ""):
            problem = _path_problem(key, value)
            if problem:
                return f"{key}={value}: {problem}"
    return None


def exit_with(message: str | None) -> None:
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def unshared_run_dir(config: DictConfig) -> str | None:
    """Processes SLURM or torchrun started one per device must be given one run dir."""
    from imgcls.utils.cluster import check_shared_run_dir
    from imgcls.utils.errors import UserError

    try:
        check_shared_run_dir(list(config.hydra.overrides.hydra))
    except UserError as err:
        return str(err)
    return None


def ensure_writable(directory: str | Path) -> None:
    """Create ``directory`` and write a probe file into it; exit with one line if that fails."""
    path = Path(str(directory))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"ok")
    except OSError as err:
        print(
            f"error: cannot write the run dir {path} ({err.strerror or err}); "
            "free disk space or point paths.log_dir at a writable directory",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


class PreRunChecks(Callback):
    """Hydra callback: refuse a run with one line before it starts. A multirun checks the values
    it starts with (the jobs' swept values are checked where they are used)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(bad_value(config) or unshared_run_dir(config))
        ensure_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(bad_value(config, required=False))
        ensure_writable(config.hydra.sweep.dir)
