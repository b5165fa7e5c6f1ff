"""Clusters, during training: SLURM's requeue in status.json, and a lost process as one line.

Under SLURM, Lightning's auto-requeue is on (``SLURMEnvironment(auto_requeue=True,
requeue_signal=SIGUSR1)``, Lightning's default there): the signal makes it save
``hpc_ckpt_<n>.ckpt`` in the run dir and call ``scontrol requeue``. :class:`RequeueStatus` records
that in ``status.json``; the SIGTERM with which SLURM then stops the job is handled by
``imgcls.utils.interrupts`` (a mid-epoch ``last.ckpt``), which keeps the status ``requeued``, and
the requeued job continues from the newest checkpoint (``RunDir.latest_checkpoint``).
"""

from __future__ import annotations

import logging
import os
import re
import signal
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment

from imgcls.run_dir import REQUEUED, RunDir
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

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


class RequeueStatus(pl.Callback):
    """Records ``requeued`` in ``status.json`` when Lightning's SLURM auto-requeue has fired.

    Lightning's handler for the requeue signal saves ``hpc_ckpt_<n>.ckpt`` in the run dir and
    calls ``scontrol requeue``; this wraps it (once Lightning installed it, at the start of
    training) and then writes the status, naming the checkpoint the requeued job resumes from.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        requeue_signal = environment.requeue_signal
        lightning_handler = signal.getsignal(requeue_signal)
        if not callable(lightning_handler):
            return

        def save_requeue_and_record(signum: int, frame: Any) -> None:
            lightning_handler(signum, frame)
            checkpoint = trainer._checkpoint_connector._hpc_resume_path
            if checkpoint is None or not trainer.is_global_zero:
                return
            self.run.write_status(
                REQUEUED,
                checkpoint=str(checkpoint),
                signal=signal.Signals(signum).name,
                slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            )
            log.info(f"requeued: the job resumes from {checkpoint}")

        signal.signal(requeue_signal, save_requeue_and_record)
