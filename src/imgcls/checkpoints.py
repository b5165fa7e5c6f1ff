"""Which checkpoint to read, the config ``resume=`` continues with, and a trained model rebuilt
from a checkpoint (eval, predict, export, the Python API): the run life cycle's checkpoints."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import OmegaConf

from imgcls.models.classifier import ImageClassifier
from imgcls.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    START_KEYS,
    RunDir,
    parse_overrides,
)
from imgcls.utils.checkpoint import (
    RUN_INFO_KEY,
    AtomicCheckpointIO,
    read_checkpoint,
    stored_class_names,
    stored_config,
)
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)


def find_checkpoint(directory: Path, prefer: str = "best") -> Path:
    """The ``best`` (``epoch_*.ckpt``, top ``val/acc``) or ``last`` checkpoint of a run dir.

    ``directory`` is a run dir or its ``checkpoints/``; the other kind is used when the preferred
    one is absent.
    """
    run = RunDir(directory.parent if directory.name == CHECKPOINT_DIR else directory)
    folder = run.path / CHECKPOINT_DIR if (run.path / CHECKPOINT_DIR).is_dir() else directory
    # the newest state: last.ckpt, or a SLURM requeue's hpc_ckpt_<n>.ckpt
    last = run.latest_checkpoint() or folder / LAST_CHECKPOINT.name
    best = sorted(folder.glob("epoch_*.ckpt"))
    if prefer == "best" and len(best) > 1 and last.is_file():  # save_top_k > 1: last knows best
        recorded = [
            Path(state["best_model_path"])
            for state in torch.load(last, weights_only=True, mmap=True)
            .get("callbacks", {})
            .values()
            if isinstance(state, dict) and state.get("best_model_path")
        ]
        best = [p for p in recorded if p.is_file()][:1] or best
    found = {"best": best[-1] if best else None, "last": last if last.is_file() else None}
    other = "last" if prefer == "best" else "best"
    path = found[prefer] or found[other]
    if path is None:
        raise UserError(
            f"ckpt_path={directory} is a directory without checkpoints (no epoch_*.ckpt or "
            "last.ckpt in it or its checkpoints/); pass a run dir that saved one, or a .ckpt file"
        )
    kind = prefer if found[prefer] else other
    log.info(f"ckpt_path={directory} is a directory: using its {kind} checkpoint {path}")
    return path


@dataclass
class Restored:
    """A trained model with the data set-up it was trained with, rebuilt from its checkpoint."""

    model: Any  # ImageClassifier, weights loaded
    datamodule: Any  # not set up: preprocessing works at once, data loads on setup()
    config: dict[str, Any]  # the resolved training config
    class_names: list[str]
    temperature: float = 1.0  # eval.py calibrate=true: probabilities are softmax(logits / T)


def store_temperature(path: str | Path, temperature: float) -> Path:
    """Save the calibration temperature in the checkpoint (a run dir: its best); its path."""
    path = find_checkpoint(Path(path)) if Path(path).is_dir() else Path(path)
    checkpoint = read_checkpoint(path)
    checkpoint.setdefault(RUN_INFO_KEY, {})["temperature"] = float(temperature)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return path


def restore(path: str | Path, data_override: Mapping[str, Any] | None = None) -> Restored:
    """Rebuild the model and its datamodule from an imgcls checkpoint (``RunInfo``'s content).

    ``data_override`` is a full data config (one with ``_target_``: another dataset) or keys
    merged into the stored one (``+data.data_dir=/elsewhere``). The datamodule gets the state it
    had at training time (say, a folder's normalisation statistics).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = find_checkpoint(Path(path)) if Path(path).is_dir() else path
    checkpoint = read_checkpoint(path)
    config = stored_config(checkpoint)
    data_cfg = OmegaConf.create(config["data"])
    if data_override and "_target_" in data_override:
        data_cfg = data_override  # as composed: its interpolations (${seed}) resolve in its root
    elif data_override:
        data_cfg = OmegaConf.merge(data_cfg, data_override)
    datamodule = instantiate(data_cfg)
    # Lightning saves the datamodule's state under its class name: another dataset gets none
    datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__) or {})
    model = ImageClassifier.from_checkpoint(checkpoint)
    temperature = float(checkpoint.get(RUN_INFO_KEY, {}).get("temperature", 1.0))
    return Restored(model, datamodule, config, stored_class_names(checkpoint), temperature)


def resumed_config(target: str | Path, given: Any, overrides: Sequence[str]) -> Any:
    """``resume=<run dir>``: that run's saved config, continued where it stopped, in its own dir.

    Overrides given now (their values read from ``given``, this command's composed config) take
    precedence (``trainer.max_epochs=8`` extends a run); the run goes
    on from its newest checkpoint (``last.ckpt``, or a SLURM requeue's newer ``hpc_ckpt``). Only
    ``resume=`` continues a run in place: ``init_from=`` and ``ckpt_path=`` start a new run.
    """
    run = RunDir(Path(target).expanduser().resolve())
    saved = run.config()
    if not saved:
        raise UserError(
            f"resume={target} is not a run dir (no {CONFIG_FILE}); pass a dir below "
            "logs/train/runs/, or init_from=<ckpt or run dir> to start a new run from its weights"
        )
    if run.status().get("status") == "completed":
        raise UserError(
            f"resume={target}: that run completed, nothing is left to continue; rerun={target} "
            f"repeats it, init_from={target} starts a new run from its weights"
        )
    cfg = OmegaConf.create(relocated(saved, run.path))  # a run dir moved or copied: its own paths
    for override in parse_overrides(overrides):
        if override.key.split(".")[0] in (*START_KEYS, "hydra") or override.deletes:
            continue
        if "/" in override.key:
            raise UserError(
                f"resume= continues a run with its own config groups; {override.key}= cannot "
                "change one: start a new run (init_from=<run dir> keeps its weights)"
            )
        if override.key in STEP_KEYS and schedule_sized_by_steps(saved):
            raise UserError(
                f"resume= cannot change {override.key}: the run's LR schedule is sized for its "
                "optimizer steps; start a new run from its weights with init_from=<run dir>"
            )
        OmegaConf.update(cfg, override.key, OmegaConf.select(given, override.key), merge=False)
    latest = run.latest_checkpoint()
    if latest is None:
        log.warning(f"{run.path} has no checkpoint yet: starting that run again")
    cfg.resume, cfg.ckpt_path = False, str(latest) if latest else None
    return cfg


#: what fixes a run's number of optimizer steps
STEP_KEYS = ("trainer.max_epochs", "trainer.max_steps", "data.batch_size",
             "trainer.accumulate_grad_batches", "trainer.limit_train_batches")  # fmt: skip


def schedule_sized_by_steps(config: dict[str, Any]) -> bool:
    """Whether the config's LR schedule takes ``total_steps`` (OneCycle, warm-up cosine)."""
    target = ((config.get("model") or {}).get("scheduler") or {}).get("_target_")
    return bool(target) and "total_steps" in inspect.signature(get_method(target)).parameters


def relocated(config: Any, new_dir: Path | str) -> Any:
    """``config`` with every path below its run dir (``paths.output_dir``) moved to ``new_dir``."""
    old = str((config.get("paths") or {}).get("output_dir") or "")
    if not old:
        return config

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return str(new_dir) + value[len(old) :]
        return value

    return moved(config)
