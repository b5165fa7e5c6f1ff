"""The scale-out path, run locally through the engines' own local modes.

submitit's local executor runs sweeps; a fake ``sbatch`` shows what the SLURM launcher would submit;
two processes with the SLURM variables Lightning reads train as two nodes (gloo on the CPU); and a
fake ``scontrol`` on PATH lets Lightning's SLURM auto-requeue save, requeue and resume.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imgcls.config import REPO_ROOT

from .conftest import cli_env, run_cli

#: a tiny run: digits, 1 epoch of a few batches, checkpoints kept (trainer=fast: no progress bar,
#: model summary or sanity check; callbacks=lean: no plots or evaluation report either)
TINY = [
    "data=digits",
    "callbacks=lean",
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: two "nodes" of one process each, DDP over gloo on the CPU (docs/workflow.md, Clusters)
TWO_NODES = [
    "data=digits",
    "extras.print_config=false",
    "logger=csv",
    "callbacks=[model_checkpoint,last_checkpoint]",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "trainer=ddp_cpu",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "trainer.max_epochs=1",
]


def start_two_nodes(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """``train.py`` as srun starts it on each of two nodes (SLURM_PROCID 0 and 1), run to the end"""
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), *TWO_NODES, *args],
            cwd=tmp_path,
            env=cli_env(tmp_path, **slurm_env(rank, nodes=2, MASTER_PORT=port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    finished = []
    for node in nodes:
        try:
            stdout, stderr = node.communicate(timeout=240)  # a hang fails the test, not the suite
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        finished.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    return finished


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
    # Lightning saved its checkpoint when the signal came; SLURM's SIGTERM then stopped the job
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True, map_location="cpu")
    assert hpc["global_step"] == 3 and hpc["epoch"] == 0
    assert first.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "requeued by SLURM at epoch 0, step 3" in first.stderr
    status = read_json(run_dir / "status.json")
    assert status["status"] == "requeued", output[-3000:]
    assert status["slurm_job_id"] == SLURM_JOB_ID and status["signal"] == "SIGUSR1"
    checkpoint = Path(status["checkpoint"])  # the newest state: what the job continues from
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] == 3
    assert not (run_dir / "metrics.json").exists()

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


#: the standard data path (a DataLoader, no workers); without class 2 the test split holds 325
#: images, not divisible by 2 processes: a padding sampler would count one image twice; batches
#: of 162: rank 0 tests 2, rank 1 one (test_reliability's DDP run: the in-memory path)
STANDARD_UNEVEN = [
    "data.classes=[0,1,3,4,5,6,7,8,9]",
    "data.in_memory=false",
    "data.num_workers=0",
    "data.batch_size=162",
]


@pytest.mark.slow
def test_two_nodes_train_as_one_run_with_single_process_metrics(tmp_path: Path) -> None:
    """Also: ranks draw different random numbers (seed + rank) from the same train split, and
    finish testing shards of unequal length (no collective paced by a rank's shard)."""
    run_dir = tmp_path / "run"
    probe = ["+callbacks.probe._target_=tests.cluster_helpers.RankProbe"]
    probe.append(f"+callbacks.probe.out={run_dir}")
    nodes = start_two_nodes(tmp_path, f"hydra.run.dir={run_dir}", *STANDARD_UNEVEN, *probe)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    logs = [node.stdout + node.stderr for node in nodes]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert "distributed_backend=gloo" in logs[0]
    assert "".join(logs).count("run dir:") == 1  # one set of logs: global rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no run dir per node
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    metrics = read_json(run_dir / "metrics.json")
    assert read_json(run_dir / "status.json")["status"] == "completed"

    # global batch = per-process batch x 2: an epoch is half the single-process steps
    cfg = OmegaConf.load(run_dir / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    n_train = len(datamodule.splits["train"][1])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == math.ceil(n_train // 2 / cfg.data.batch_size)
    assert last["global_step"] < math.ceil(n_train / cfg.data.batch_size)
    assert last["global_step"] == 4  # ceil((1101 // 2) / 162)
    ranks = [read_json(run_dir / f"rank{r}.json") for r in (0, 1)]
    assert ranks[0]["rand"] != ranks[1]["rand"]
    assert ranks[0]["train_labels"] == ranks[1]["train_labels"]
    assert sorted(r["test_batches"] for r in ranks) == [1, 2]

    # the same weights in this one process give the synced validation and test metrics
    import pytorch_lightning as pl

    from imgcls.models.classifier import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (val,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    (test,) = trainer.test(model, datamodule=datamodule, verbose=False)
    assert val["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert test["test/acc"] < 1  # (a perfect score would hide a repeated image)
    assert test["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert test["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_a_killed_node_ends_the_run_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rank0, rank1 = start_two_nodes(
        tmp_path,
        f"hydra.run.dir={run_dir}",
        "+callbacks.die._target_=tests.cluster_helpers.SignalAtStep",
        "+callbacks.die.step=3",
        "+callbacks.die.signum=KILL",
        "+callbacks.die.rank=1",
    )
    assert rank1.returncode == -9  # node 1 is gone mid-epoch
    assert rank0.returncode == 2, rank0.stderr[-3000:]
    (line,) = rank0.stderr.strip().splitlines()
    assert line.startswith("error: another process of this 2-process run is gone")
    assert "so rank 0 stops too" in line
    status = read_json(run_dir / "status.json")
    assert status["status"] == "failed" and status["error"] == line.removeprefix("error: ")


def sbatch_script(tmp_path: Path, monkeypatch, overrides: list[str], jobs: int = 2) -> str:
    """What ``-m hydra/launcher=slurm`` submits for ``jobs`` jobs: a fake ``sbatch`` records it."""
    from hydra import compose, initialize_config_dir

    from imgcls.config import CONFIG_DIR

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path / "submitted.sh"}\necho "sbatch: error: fake" >&2\nexit 1\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "hydra/launcher=slurm",
                "hydra.job.name=train",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Exception, match="sbatch: error: fake"):
        launcher.launch([[f"seed={seed}"] for seed in range(jobs)], initial_job_idx=0)
    return (tmp_path / "submitted.sh").read_text()


SIZING = ("nodes", "ntasks-per-node", "gpus-per-node", "partition", "time")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (  # M nodes x N GPUs (docs/workflow.md): one task per GPU, the time and partition given
            [
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.timeout_min=240",
            ],
            {"nodes": "2", "ntasks-per-node": "4", "gpus-per-node": "4", "partition": "gpu",
             "time": "240"},
        ),
        (  # one node with N GPUs, as users type it
            ["trainer.gpus=2"],
            {"nodes": "1", "ntasks-per-node": "2", "gpus-per-node": "2", "time": "60"},
        ),
        (  # CPU training asks for no GPU
            ["trainer=ddp_cpu", "trainer.num_nodes=3"],
            {"nodes": "3", "ntasks-per-node": "2", "time": "60"},
        ),
    ],
)  # fmt: skip
def test_slurm_launcher_submits_a_job_sized_from_the_trainer(
    tmp_path: Path, monkeypatch, overrides: list[str], expected: dict[str, str]
) -> None:
    script = sbatch_script(tmp_path, monkeypatch, overrides, jobs=2)
    flags = dict(
        line.removeprefix("#SBATCH --").split("=", 1)
        for line in script.splitlines()
        if line.startswith("#SBATCH --")
    )
    assert {k: v for k, v in flags.items() if k in SIZING} == expected
    assert flags["array"] == "0-1%2"  # one array task per sweep job
    assert flags["signal"] == "USR1@120"  # Lightning's auto-requeue signal, before the time limit
    (command,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert command.endswith(f"-u -m submitit.core._submit {tmp_path / 'sweep'}/.submitit/%j")


def test_slurm_launcher_refuses_a_job_it_cannot_size_in_one_line(tmp_path: Path, capsys) -> None:
    from hydra import compose, initialize_config_dir

    from imgcls.config import CONFIG_DIR
    from imgcls.utils.checks import PreRunChecks

    overrides = ["hydra/launcher=slurm", "hydra.job.name=train", "trainer=ddp"]  # devices=-1
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    assert "pre_run_checks" in cfg.hydra.callbacks  # every multirun checks before submitting
    with pytest.raises(SystemExit) as exit_info:
        PreRunChecks().on_multirun_start(cfg)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: hydra/launcher=slurm sizes the job from the devices per node, got "
        "trainer.devices=-1; set trainer.devices=N (GPUs or processes per node)"
    )


@pytest.mark.slow
def test_submitit_local_sweep_records_every_job_reports_them_and_resumes(tmp_path: Path) -> None:
    """submitit's local executor runs each job in its own process, as SLURM would."""
    import csv

    from imgcls.report import main as report_main

    sweep = [
        "-m",
        "hydra/launcher=submitit_local",
        *TINY,
        "trainer.limit_train_batches=2",
        "model.optimizer.lr=0.01,-1",  # job 1 fails
    ]
    first = run_cli("train.py", *sweep, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]  # the sweep ran; a job failed
    assert "sweep: 2 jobs: 1 completed, 1 failed, 0 skipped" in first.stdout
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert "Submitit 'local' sweep output dir" in first.stdout + first.stderr
    assert (sweep_dir / ".submitit").is_dir()  # the jobs ran through submitit
    jobs = [sweep_dir / "0", sweep_dir / "1"]
    assert sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()) == ["0", "1"]
    done, failed = (read_json(job / "status.json") for job in jobs)
    assert done["status"] == "completed" and 0 <= done["metrics"]["val/acc_best"] <= 1
    assert failed["status"] == "failed" and "lr must be > 0" in failed["error"]
    assert "Traceback" in (jobs[1] / "traceback.txt").read_text()

    assert report_main([str(sweep_dir), "--no-plot"]) == 0
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    by_lr = {row["model.optimizer.lr"]: row for row in rows}
    assert sorted(by_lr) == ["-1", "0.01"]
    assert by_lr["0.01"]["status"] == "completed" and float(by_lr["0.01"]["val/acc_best"]) >= 0
    assert by_lr["-1"]["status"] == "failed" and "lr must be > 0" in by_lr["-1"]["error"]

    finished = (jobs[0] / "metrics.json").stat().st_mtime_ns
    failed_at = (jobs[1] / "traceback.txt").stat().st_mtime_ns
    again = run_cli("train.py", *sweep, "resume=true", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "sweep: 2 jobs: 0 completed, 1 failed, 1 skipped" in again.stdout
    assert "already completed: skipped (resume=true)" in (jobs[0] / "train.log").read_text()
    assert (jobs[0] / "metrics.json").stat().st_mtime_ns == finished  # not trained again
    assert (jobs[1] / "traceback.txt").stat().st_mtime_ns > failed_at  # the failed job ran again
    assert read_json(jobs[0] / "status.json")["status"] == "completed"


def test_resume_continues_from_the_newest_checkpoint_of_a_run_dir(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from imgcls.lifecycle import resumed_config
    from imgcls.utils.checkpoint import latest_checkpoint

    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data: {batch_size: 16}\nckpt_path: null\n")
    assert latest_checkpoint(run_dir) is None
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"epoch 1")
    hpc = run_dir / "hpc_ckpt_1.ckpt"  # a SLURM requeue after that epoch
    hpc.write_bytes(b"mid epoch 2")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert latest_checkpoint(run_dir) == hpc
    assert resumed_config(run_dir, OmegaConf.create(), []).ckpt_path == str(hpc)
    os.utime(hpc, ns=(500_000_000, 500_000_000))  # the resumed job went past it: last is newer
    assert latest_checkpoint(run_dir) == last


def test_processes_started_by_slurm_must_share_a_run_dir(monkeypatch) -> None:
    from imgcls.utils.checks import unshared_run_dir

    assert unshared_run_dir(["data=digits"]) is None  # one process: its own run dir
    for name, value in slurm_env(rank=1, nodes=2).items():
        monkeypatch.setenv(name, value)
    assert "pass the same hydra.run.dir=<shared dir>" in unshared_run_dir(["data=digits"])
    assert unshared_run_dir(["data=digits", "hydra.run.dir=/shared/run"]) is None
    assert unshared_run_dir(["-m", "hydra/launcher=slurm"]) is None  # submitit: one sweep dir


def test_only_a_lost_process_is_reported_as_one(monkeypatch) -> None:
    from imgcls.utils import runs as cluster

    gloo = (
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:36762. This is typically caused by a remote worker crashing."
    )
    assert cluster.lost_process_error(RuntimeError(gloo)) is None  # not a distributed run
    monkeypatch.setattr(cluster.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(cluster.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(cluster.dist, "get_rank", lambda: 2)
    message = str(cluster.lost_process_error(RuntimeError(gloo)))
    assert message.startswith("another process of this 4-process run is gone")
    assert "rank 2 stops too (Connection closed by peer [127.0.0.1]:36762)" in message
    for other in ("DataLoader timed out after 5 seconds", "Broken pipe", "CUDA out of memory"):
        assert cluster.lost_process_error(RuntimeError(other)) is None
