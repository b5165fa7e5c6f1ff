"""A run's life cycle: its dir, ``resume=``, what checkpoints carry, signals, requeues, failures."""

import contextlib
import inspect
import logging
import os
import random
import re
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from imgcls.config import CONFIG_DIR
from imgcls.utils import runs
from imgcls.utils.checkpoint import RUN_INFO_KEY, latest_checkpoint
from imgcls.utils.checks import path_problem, read_json
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE, STATUS_FILE, METRICS_FILE = "config.yaml", "status.json", "metrics.json"
ERROR_FILE, CHECKPOINT_DIR, REQUEUED = "traceback.txt", "checkpoints", "requeued"
#: logged when the training loop starts: from here on a signal saves a resumable checkpoint
TRAINING_STARTED = "training started: Ctrl-C or SIGTERM saves a resumable checkpoint"
#: what fixes a run's number of optimizer steps (a OneCycle or warm-up schedule is sized by them)
STEP_KEYS = ("trainer.max_epochs", "trainer.max_steps", "data.batch_size",
             "trainer.accumulate_grad_batches", "trainer.limit_train_batches")  # fmt: skip


class RunDir:
    """A run dir: what imgcls reads from it and (rank 0 only) writes into it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def config(self) -> dict[str, Any]:
        """The resolved config (empty when missing or unreadable)."""
        with contextlib.suppress(OSError, yaml.YAMLError):
            config = yaml.safe_load((self.path / CONFIG_FILE).read_text())
            return config if isinstance(config, dict) else {}
        return {}

    def status(self) -> dict[str, Any]:
        return read_json(self.path / STATUS_FILE)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        runs.write_json(self.path / METRICS_FILE, metrics)

    @rank_zero_only
    def write_status(self, status: str, **details: Any) -> None:
        """``running`` / ``completed`` / ``failed`` / ``interrupted`` / ``requeued``, timed."""
        now = time.time()
        started = now if status == "running" else self.status().get("started_at", now)
        times = {"started_at": started} | ({} if status == "running" else {"finished_at": now})
        runs.write_json(self.path / STATUS_FILE, {"status": status, **times, **details})


def run_dir(cfg: DictConfig) -> RunDir:  # paths.output_dir
    return RunDir(cfg.paths.output_dir)


def links(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, what it interpolates) in an unresolved config: ``data.seed: ${seed}`` -> seed."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from links(value, f"{key}.{name}".lstrip("."))
    elif isinstance(node, str):
        parent = key.split(".")[:-1]
        # ${seed}, ${..optimizer.lr}, ${oc.select:extras.eval_report,true}
        for dots, target in re.findall(r"\$\{(?:[\w.]+:)?(\.*)([\w.]+)", node):
            base = parent[: len(parent) + 1 - len(dots)] if dots else []
            yield key, ".".join([*base, target])
        if "${datamodule:" in node:  # the shapes of whatever data= gives
            yield key, "data"


def apply_overrides(cfg: Any, given: Any, overrides: Iterable[str], how: str, sized=False) -> None:
    """The command line's ``key=value`` overrides onto a saved, resolved config (``resume=``,
    ``rerun=``), with the values that interpolate them (``seed=2``: ``data.seed`` too)."""
    changed = set()
    for key, _, deletes in runs.parse_overrides(overrides):
        if key.split(".")[0] in ("resume", "rerun", "ckpt_path", "hydra") or deletes:
            continue
        if (CONFIG_DIR / key.split("/")[0]).is_dir():  # model=..., model/optimizer=...
            raise UserError(
                f"{how} keeps the run's own config groups; {key}= cannot change one: start a new "
                "run (init_from=<run dir> keeps its weights)"
            )
        if key in STEP_KEYS and sized:
            raise UserError(
                f"{how} cannot change {key}: the run's LR schedule is sized for its optimizer "
                "steps; start a new run from its weights with init_from=<run dir>"
            )
        OmegaConf.update(cfg, key, OmegaConf.select(given, key), merge=False)
        if key.split(".")[0] != "paths":  # the run dir's paths stay the run's own
            changed.add(key)
    pairs = list(links(OmegaConf.to_container(given, resolve=False)))

    def touches(target: str) -> bool:  # the same key, one within it, or one around it
        return any(f"{target}.".startswith(f"{c}.") or c.startswith(f"{target}.") for c in changed)

    while new := {key for key, target in pairs if touches(target)}:
        for key in new - changed:
            OmegaConf.update(cfg, key, OmegaConf.select(given, key), merge=False)
        changed, pairs = changed | new, [(k, t) for k, t in pairs if k not in new]


def resumed_config(target: str | Path, given: Any, overrides: Iterable[str]) -> DictConfig:
    """``resume=<run dir>``: its saved config, moved, from its newest checkpoint; ``given`` wins."""
    run = RunDir(Path(target).expanduser().resolve())
    if problem := path_problem("resume", str(target)):  # the pre-run check, for a sweep's jobs
        raise UserError(f"resume={target}: {problem}")
    saved = run.config()
    cfg = OmegaConf.create(runs.relocated(saved, run.path))
    scheduler = ((saved.get("model") or {}).get("scheduler") or {}).get("_target_")
    sized = bool(scheduler) and "total_steps" in inspect.signature(get_method(scheduler)).parameters
    apply_overrides(cfg, given, overrides, "resume=", sized)
    if (latest := latest_checkpoint(run.path)) is None:
        log.warning(f"{run.path} has no checkpoint yet: starting that run again")
    cfg.resume, cfg.ckpt_path = False, str(latest) if latest else None
    return cfg


class RunInfo(pl.Callback):
    """Every checkpoint carries the resolved config and the class names: eval/predict/export's."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: Any, checkpoint: dict) -> None:
        names = [str(c) for c in getattr(trainer.datamodule, "class_names", None) or []]
        checkpoint[RUN_INFO_KEY] = {"config": self.config, "class_names": names}


class Randomness(pl.Callback):
    """DDP ranks reseed with ``seed + rank`` after the data split; checkpoints carry RNG states."""

    def __init__(self, seed: int) -> None:
        self.seed, self.restored = seed, None

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if trainer.world_size > 1:
            pl.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)

    def state_dict(self) -> dict[str, Any]:
        _, keys, *rest = np.random.get_state()  # its key array as a list: weights_only reads it
        numpy = [keys.tolist(), *rest]
        return {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        state, self.restored = self.restored, None
        if state is not None and trainer.world_size > 1:  # rank 0's state: ranks go on apart
            step = self.seed + trainer.global_rank + trainer.world_size * trainer.global_step
            pl.seed_everything(step, workers=True, verbose=False)
        elif state is not None:
            torch.set_rng_state(state["torch"])
            keys, *rest = state["numpy"]
            np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), *rest))
            random.setstate(state["python"])


class StopOnSignal(OnExceptionCheckpoint):
    """Ctrl-C or SIGTERM: ``last.ckpt`` after the batch (Lightning's ``SIGTERMException``)."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(Path(run_dir) / CHECKPOINT_DIR, "last")
        self.signal_name, self.where, self.saved, self.previous = None, "", None, None

    def on_sigint(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C is passed on as SIGTERM; a second one stops at once (no checkpoint)."""
        if self.signal_name:
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        log.warning("SIGINT received: stopping after this batch (Ctrl-C again: at once)")
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop after this batch

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.on_sigint)

    def teardown(self, *args: Any, **kwargs: Any) -> None:  # last.ckpt stays: it is the run's
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        log.info(TRAINING_STARTED)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.teardown()
        if not isinstance(exception, SIGTERMException):
            return
        self.signal_name = self.signal_name or "SIGTERM"
        if trainer.state.fn != TrainerFn.FITTING:
            self.where = "while testing"
            return
        if hasattr(pl_module, "stop_if_nonfinite"):  # never save weights a NaN loss poisoned
            pl_module.stop_if_nonfinite()
        super().on_exception(trainer)
        self.saved = Path(self.ckpt_path)
        self.where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"


@contextlib.contextmanager
def interruptible(cfg: Any, stop: StopOnSignal | None = None) -> Iterator[None]:
    """A signal: ``status.json`` says ``interrupted`` (with the command that continues the run) or
    ``requeued`` (SLURM), one line, exit 130 or 143; a failure: ``failed`` and its traceback."""
    run, started = run_dir(cfg), time.time()
    stop = stop or StopOnSignal(run.path)
    try:
        yield
    except KeyboardInterrupt:
        run.write_status("interrupted", signal="SIGINT", checkpoint=None)
        raise
    except Exception as err:  # a sweep's job: recorded, the sweep goes on (runs.report_errors)
        run.write_status("failed", error=runs.describe(err)[0])
        if rank_zero_only.rank == 0:
            (run.path / ERROR_FILE).write_text(traceback.format_exc())
        raise
    except SIGTERMException:
        name = stop.signal_name or "SIGTERM"
        saved = stop.saved or latest_checkpoint(run.path)
        checkpoint = str(saved) if saved else None
        # Lightning's SLURM requeue (SIGUSR1) saved an hpc_ckpt_<n>; then SLURM stopped the job
        requeued = [p for p in run.path.glob("hpc_ckpt_*.ckpt") if p.stat().st_mtime >= started]
        if SLURMEnvironment.detect() and requeued:
            job = os.environ.get("SLURM_JOB_ID")
            run.write_status(REQUEUED, checkpoint=checkpoint, signal="SIGUSR1", slurm_job_id=job)
            print(f"requeued by SLURM {stop.where}: continues from {checkpoint}", file=sys.stderr)
        else:  # the command that continues this run (in a sweep: every unfinished job)
            script = shlex.quote(sys.argv[0]) if sys.argv[0].endswith(".py") else "train.py"
            command = f"python {script} resume={shlex.quote(str(run.path))}"
            if runs.is_multirun():
                skip = ("hydra.sweep.dir=", "resume=", "-m", "--multirun")
                kept = shlex.join(a for a in sys.argv[1:] if not a.startswith(skip))
                sweep = shlex.quote(str(HydraConfig.get().sweep.dir))
                command = f"python {script} -m {kept} resume=true hydra.sweep.dir={sweep}"
            run.write_status("interrupted", signal=name, checkpoint=checkpoint, resume=command)
            saved_text = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint yet"
            message = f"interrupted by {name} {stop.where}: {saved_text}; continue with: {command}"
            print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.Signals[name].value) from None
