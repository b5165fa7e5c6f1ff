"""Ctrl-C (SIGINT) and SIGTERM (what SLURM sends before preemption) stop a run resumably.

While the trainer runs, ``InterruptCheckpoint`` turns the first signal into a request: the
current training batch finishes, ``checkpoints/last.ckpt`` is written right there (mid-epoch,
the way Lightning saves every-n-steps checkpoints, so a resume repeats no finished step) and
``RunInterrupted`` stops the run. ``interruptible`` marks the run's ``status.json`` as
``interrupted`` and prints the exact command that continues it. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from imgcls.run_dir import REQUEUED
from imgcls.utils.runs import is_multirun, run_dir

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)
#: logged when the training loop starts: from here on a signal saves a resumable checkpoint
TRAINING_STARTED = "training started: Ctrl-C or SIGTERM saves a resumable checkpoint"


class RunInterrupted(BaseException):  # noqa: N818 - not an error: a requested stop
    """The run stopped on a signal; ``checkpoint`` holds its state (None: nothing to resume).

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` records it as a
    failure, and Lightning passes it on after calling its ``on_exception`` hooks.
    """

    def __init__(self, signal_name: str, checkpoint: Path | None, where: str) -> None:
        super().__init__(f"{signal_name} {where}")
        self.signal_name, self.checkpoint, self.where = signal_name, checkpoint, where

    @property
    def exit_code(self) -> int:
        return 128 + signal.Signals[self.signal_name].value


class InterruptCheckpoint(pl.Callback):
    """Lightning callback: on SIGINT/SIGTERM save ``checkpoint`` after the current batch, stop.

    Signals are caught from ``setup`` to ``teardown`` of each trainer call (fit and test);
    outside them Python's defaults apply. In DDP rank 0's request is shared with every rank.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}  # handlers replaced while a trainer call runs
        self._outside: dict[int, Any] = {}  # the handlers before the first trainer call

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._previous:
            # Lightning reinstalls this handler after an exception: outside a trainer call the
            # signal does what it did before
            _default_action(signum, frame, self._outside.get(signum, signal.SIG_DFL))
            return
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.requested is None:
            self.requested = name
            log.warning(f"{name} received: stopping after this batch (Ctrl-C again: at once)")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._on_signal)
            if self._previous[signum] != self._on_signal:
                self._outside[signum] = self._previous[signum]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.teardown(trainer, trainer.lightning_module, "")

    def _stop_requested(self, trainer: pl.Trainer, batch_idx: int | None = None) -> bool:
        """Whether a signal asks to stop. In DDP every process asks the others (a collective
        call) at the same batches, every ``log_every_n_steps`` and at the epoch's last one, not
        at every step: an all-reduce per step would cost what the sync-free step saved."""
        if trainer.world_size > 1:
            if batch_idx is not None:
                last = batch_idx + 1 == trainer.num_training_batches
                if (batch_idx + 1) % max(1, trainer.log_every_n_steps) and not last:
                    return False
            return trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        return self.requested is not None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(TRAINING_STARTED)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._stop_requested(trainer, batch_idx):
            # the non-finite loss watch reads its window now: never save poisoned weights
            stop_if_nonfinite = getattr(pl_module, "stop_if_nonfinite", None)
            if stop_if_nonfinite is not None:
                stop_if_nonfinite()
            trainer.save_checkpoint(self.checkpoint)  # the whole trainer state, mid-epoch
            self.requested = self.requested or "SIGTERM"
            where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
            raise RunInterrupted(self.requested, self.checkpoint, where)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a signal during validation: the epoch-end checkpoint has just been written
        if self._stop_requested(trainer) and self.checkpoint.is_file():
            where = f"after epoch {trainer.current_epoch - 1}"
            raise RunInterrupted(self.requested or "SIGTERM", self.checkpoint, where)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # testing is repeated in full on resume; in DDP asked every log_every_n_steps batches
        if self._stop_requested(trainer, batch_idx):
            saved = self.checkpoint if self.checkpoint.is_file() else None
            raise RunInterrupted(self.requested or "SIGTERM", saved, "while testing")

    def raise_if_requested(self) -> None:
        """Between trainer calls (after fit, before test): a pending request stops the run."""
        if self.requested is not None:
            saved = self.checkpoint if self.checkpoint.is_file() else None
            raise RunInterrupted(self.requested, saved, "after training")


def _default_action(signum: int, frame: FrameType | None, handler: Any) -> None:
    """What ``handler`` (as ``signal.signal`` returns it) does with the signal."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def resume_command(run_dir: Path) -> str:
    """The command that continues this run (or, in a sweep, every unfinished job)."""
    script = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    if not is_multirun():
        return f"python {script} resume={shlex.quote(str(run_dir))}"
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = HydraConfig.get().sweep.dir
    kept = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "resume="))]
    args = " ".join(shlex.quote(a) for a in kept if a not in ("-m", "--multirun"))
    return f"python {script} -m {args} resume=true hydra.sweep.dir={shlex.quote(str(sweep_dir))}"


@contextlib.contextmanager
def interruptible(cfg: Any) -> Iterator[None]:
    """Turn a signalled stop into ``status.json: interrupted``, the resume command, exit 130/143.

    A Ctrl-C outside a trainer call (while data loads) or a second one is a plain
    ``KeyboardInterrupt``: the status still says ``interrupted`` (no checkpoint), then it goes on.
    Only the first process of a distributed run writes the status.
    """
    writes = rank_zero_only.rank == 0
    try:
        yield
    except KeyboardInterrupt:
        if writes:
            run_dir(cfg).write_status("interrupted", signal="SIGINT", checkpoint=None)
        raise
    except (RunInterrupted, SIGTERMException) as stop:
        if not isinstance(stop, RunInterrupted):  # Lightning stopped on SIGTERM by itself
            stop = RunInterrupted("SIGTERM", None, "")
        run = run_dir(cfg)
        command = resume_command(run.path)
        checkpoint = str(stop.checkpoint) if stop.checkpoint else None
        status = run.status()
        if status.get("status") == REQUEUED:
            # SLURM stops a job it requeues: the job comes back by itself and continues from here
            checkpoint = checkpoint or status.get("checkpoint")
            details = {k: status[k] for k in ("signal", "slurm_job_id") if k in status}
            if writes:
                run.write_status(REQUEUED, checkpoint=checkpoint, **details)
            print(f"requeued by SLURM {stop.where}: continues from {checkpoint}", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        if writes:
            run.write_status(
                "interrupted", signal=stop.signal_name, checkpoint=checkpoint, resume=command
            )
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint yet"
        print(
            f"interrupted by {stop.signal_name} {stop.where}: {saved}; continue with: {command}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(stop.exit_code) from None
