"""The scale-out path, run locally through the engines' own local modes.

submitit's local executor runs sweeps; a fake ``sbatch`` shows what the SLURM launcher would submit;
two processes with the SLURM variables Lightning reads train as two nodes (gloo on the CPU); and a
fake ``scontrol`` on PATH lets Lightning's SLURM auto-requeue save, requeue and resume.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from .conftest import run_cli

#: a tiny run: digits, 1 epoch of a few batches, checkpoints kept (trainer=fast: no progress bar,
#: model summary, plots or sanity check)
TINY = [
    "data=digits",
    "extras.print_config=false",
    "logger=csv",
    "trainer=fast",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]
SLURM_JOB_ID = "4242"


def fake_slurm_bin(tmp_path: Path) -> Path:
    """A dir for PATH with a fake ``scontrol``: it records its arguments in ``scontrol.args``,
    and ``requeue`` then terminates the job (SIGTERM to its caller) as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path / "scontrol.args"}\n'
        'if [ "$1" = requeue ]; then kill -TERM "$PPID"; fi\n'
    )
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def slurm_env(rank: int = 0, nodes: int = 1, **extra: str) -> dict[str, str]:
    """The variables srun sets for task ``rank`` of a job with one task on each of ``nodes``."""
    return {
        "SLURM_JOB_ID": SLURM_JOB_ID,
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": str(nodes),
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank),
        **extra,
    }


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_slurm_requeue_signal_saves_a_checkpoint_requeues_and_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        f"hydra.run.dir={run_dir}",
        # SLURM's warning before the time limit or a preemption, in the middle of epoch 0
        "+callbacks.preempt._target_=tests.cluster_helpers.SignalAtStep",
        "+callbacks.preempt.step=3",
        "+callbacks.preempt.signum=USR1",
    ]
    env = slurm_env(PATH=f"{fake_slurm_bin(tmp_path)}:{os.environ['PATH']}")
    first = run_cli("train.py", *args, cwd=tmp_path, env=env)
    output = first.stdout + first.stderr
    assert (tmp_path / "scontrol.args").read_text() == f"requeue {SLURM_JOB_ID}\n", output[-3000:]
    status = read_json(run_dir / "status.json")
    assert status["status"] == "requeued", output[-3000:]
    assert status["slurm_job_id"] == SLURM_JOB_ID and status["signal"] == "SIGUSR1"
    checkpoint = Path(status["checkpoint"])
    assert checkpoint == run_dir / "hpc_ckpt_1.ckpt"
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["global_step"] == 3 and saved["epoch"] == 0  # saved when the signal came
    assert not (run_dir / "metrics.json").exists()  # the job stopped there, as SLURM requeued it

    # the requeued job runs the same command again, in the same run dir
    second = run_cli("train.py", *args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {checkpoint}" in log
    status = read_json(run_dir / "status.json")
    assert status["status"] == "completed" and 0 <= status["metrics"]["test/acc"] <= 1
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 1 and last["global_step"] == 8
    # resumed at step 3: the signal at step 3 never came again, so nothing was requeued twice
    assert (tmp_path / "scontrol.args").read_text() == f"requeue {SLURM_JOB_ID}\n"
