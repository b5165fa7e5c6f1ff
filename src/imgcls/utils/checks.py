"""Checks before any work (a Hydra callback, after composing, before the run dir is made; no
torch): values a run cannot use, processes without a shared run dir, an unwritable run dir. Each
is one line, ``error: <key>=<value>: <what is wrong>; <how to fix>``, and exit code 2. Hydra
reports the config mistakes it finds itself (an unknown option, a key typo, bad syntax).
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


def _int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: key -> (the value is fine, what is wrong; how to fix)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.batch_size": (lambda v: _int(v, 1), "must be a positive integer; e.g. 64"),
    "data.eval_batch_size": (lambda v: v is None or _int(v, 1), "must be null or >= 1; e.g. 1000"),
    "model.optimizer.lr": (lambda v: _number(v) and v > 0, "must be a positive number; e.g. 0.01"),
    "model.label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1); e.g. 0.1"),
    "trainer.precision": (lambda v: not isinstance(v, bool) and v in PRECISIONS,
                          "is not a Lightning precision; use " + ", ".join(PRECISIONS[7:13])),
    "trainer.max_epochs": (lambda v: v is None or _int(v, -1), "must be >= 0, or -1; e.g. 10"),
}  # fmt: skip


def _show(value: Any) -> str:
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
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
    if key == "resume" and not (path / "config.yaml").is_file():
        return "is not a run dir (no config.yaml in it); pass a dir below logs/train/runs/"
    if key == "resume" and '"completed"' in _text(path / "status.json"):
        return (
            "that run completed, nothing is left to continue; rerun= repeats it, init_from= "
            "reuses its weights"
        )
    if key == "ckpt_path" and path.is_file() and path.suffix != ".onnx":  # onnx: predict.py
        with path.open("rb") as file:
            if not file.read(4).startswith(CHECKPOINT_MAGIC):
                return "is not a checkpoint (no file torch.save wrote); give a .ckpt or a run dir"
    return None


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _select(cfg: DictConfig, key: str) -> Any:  # ABSENT: no value, ``???`` or unresolvable
    return OmegaConf.select(cfg, key, default=ABSENT, throw_on_resolution_failure=False)


def bad_value(cfg: DictConfig, required: bool = True) -> str | None:
    """The first value of ``cfg`` a run cannot use, as ``<key>=<value>: <problem>; <fix>``
    (``required``: also a ``???`` left out)."""
    for key in missing_keys(cfg) if required else ():
        return f"{key}=???: is required; add {key}=... to the command"
    for key, (ok, problem) in RULES.items():
        value = _select(cfg, key)
        if value is not ABSENT and not ok(value):
            return f"{key}={_show(value)}: {problem}"
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


def unwritable(directory: str | Path) -> str | None:
    """Create ``directory`` and write a probe file into it: the problem, if that fails."""
    try:
        Path(str(directory)).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=str(directory)) as probe:
            probe.write(b"ok")  # a full disk fails here
    except OSError as err:
        return (
            f"cannot write the run dir {directory} ({err.strerror or err}); "
            "free disk space or point paths.log_dir at a writable directory"
        )
    return None


class PreRunChecks(Callback):
    """Hydra callback: refuse a run with one line before it starts. A multirun checks the values
    it starts with (the jobs' swept values are checked where they are used)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from imgcls.utils.cluster import check_shared_run_dir  # one run dir for SLURM/torchrun
        from imgcls.utils.errors import UserError

        exit_with(bad_value(config))
        try:
            check_shared_run_dir(list(config.hydra.overrides.hydra))
        except UserError as err:
            exit_with(str(err))
        exit_with(unwritable(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(bad_value(config, required=False) or unwritable(config.hydra.sweep.dir))
