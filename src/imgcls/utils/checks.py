"""Checks before the run dir is made and torch loads: ``error: <key>=<value>: ...``, exit 2."""

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgcls.utils.errors import UserError

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
RULES = {
    "data.batch_size": (lambda v: _int(v, 1), "must be a positive integer; e.g. 64"),
    "data.eval_batch_size": (lambda v: v is None or _int(v, 1), "must be null or >= 1; e.g. 1000"),
    "model.optimizer.lr": (lambda v: _number(v) and v > 0, "must be a positive number; e.g. 0.01"),
    "model.label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1); e.g. 0.1"),
    "trainer.precision": (lambda v: not isinstance(v, bool) and v in PRECISIONS,
                          "is not a Lightning precision; use " + ", ".join(PRECISIONS[7:13])),
    "trainer.max_epochs": (lambda v: v is None or (_int(v, -1) and v != 0),  # 0 trains nothing
                           "must be >= 1, or -1 (no limit); e.g. 10"),
    "callbacks.ema.decay": (lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]; e.g. 0.999"),
    "callbacks.finetuning.backbone_lr_factor": (lambda v: _number(v) and v > 0,
                                                "must be a positive number; e.g. 0.1"),
}  # fmt: skip


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys left at ``???`` in ``OmegaConf.to_container(cfg)`` (unresolved: nothing imported)."""
    if not isinstance(node, dict):
        return [prefix.rstrip(".")] if node == "???" else []
    return [m for k, v in node.items() if k != "hydra" for m in missing_keys(v, f"{prefix}{k}.")]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when it is missing or half-written."""
    with contextlib.suppress(OSError, ValueError):
        payload = json.loads(path.read_text())
        return payload if isinstance(payload, dict) else {}
    return {}


def path_problem(key: str, value: Any) -> str | None:
    if not isinstance(value, str) or value.lower() in ("true", "false", "null", ""):
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return "does not exist; check the path (relative paths start where you run the command)"
    if key == "resume":
        if not (path / "config.yaml").is_file():
            return "is not a run dir (no config.yaml in it); pass a dir below logs/train/runs/"
        if read_json(path / "status.json").get("status") == "completed":
            return (
                "that run completed, nothing is left to continue; rerun= repeats it, init_from= "
                "reuses its weights"
            )
    if key == "ckpt_path" and path.is_file() and path.suffix != ".onnx":  # onnx: predict.py
        with path.open("rb") as file:
            if not file.read(4).startswith(CHECKPOINT_MAGIC):
                return "is not a checkpoint (no file torch.save wrote); give a .ckpt or a run dir"
    return None


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)


def bad_value(cfg: DictConfig, required: bool = True) -> str | None:
    """The first value a run cannot use, ``<key>=<value>: <problem>; <fix>`` (or a ``???``)."""
    for key in missing_keys(OmegaConf.to_container(cfg)) if required else ():
        return f"{key}=???: is required; add {key}=... to the command"
    for key, (ok, problem) in RULES.items():
        if (value := _select(cfg, key, ABSENT)) is not ABSENT and not ok(value):
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            return f"{key}={value if isinstance(value, str) else json.dumps(value)}: {problem}"
    for name in ("mlflow", "wandb"):  # the loggers of the optional extras
        if _select(cfg, f"logger.{name}") and not importlib.util.find_spec(name):
            return f"logger={name} needs the {name} package; pip install -e '.[{name}]'"
    if _select(cfg, "data.root", ABSENT) is None:
        return "data.root=null: this dataset reads your image folder; add data.root=PATH"
    for key in ("ckpt_path", "init_from", "resume", "data.root"):
        if problem := path_problem(key, value := _select(cfg, key)):
            return f"{key}={value}: {problem}"
    return None


def exit_with(message: str | None) -> None:
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def unshared_run_dir(args: Sequence[str]) -> str | None:
    """Processes SLURM or torchrun start each compose a run dir: they need one ``hydra.run.dir``."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    else:  # as Lightning's SLURMEnvironment.detect(): an interactive allocation is no launch
        interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
        world = 1 if interactive else int(os.environ.get("SLURM_NTASKS", "1"))
    shared = any(arg.lstrip("+").startswith("hydra.run.dir=") for arg in args)
    if world <= 1 or shared or "-m" in args or "--multirun" in args:
        return None
    return (
        f"this is one of {world} processes started by SLURM/torchrun, and each would write its "
        "own run dir: pass the same hydra.run.dir=<shared dir> to every process "
        "(or submit with python train.py -m hydra/launcher=slurm)"
    )


def unwritable(directory: str) -> str | None:
    """Create ``directory`` and write a probe file into it: the problem, if that fails."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"ok")  # a full disk fails here
    except OSError as err:
        return (
            f"cannot write the run dir {directory} ({err.strerror or err}); "
            "free disk space or point paths.log_dir at a writable directory"
        )
    return None


class PreRunChecks(Callback):
    """A multirun checks the values it starts with (the swept ones are checked where used)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        shared = unshared_run_dir(list(config.hydra.overrides.hydra))  # SLURM/torchrun processes
        exit_with(bad_value(config) or shared or unwritable(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # a launcher config that cannot be resolved: a SLURM job it cannot size
            OmegaConf.to_container(config.hydra.launcher, resolve=True)
        except Exception as raised:
            err: BaseException | None = raised  # the UserError behind OmegaConf's wrappers
            while err is not None and not isinstance(err, UserError):
                err = err.__cause__ or err.__context__
            if err is None:
                raise
            exit_with(str(err))
        exit_with(bad_value(config, required=False) or unwritable(config.hydra.sweep.dir))
