"""Ctrl-C and SIGTERM stop a run with a resumable checkpoint; resume= finishes it exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from imgcls.config import REPO_ROOT
from imgcls.lifecycle import TRAINING_STARTED

from .conftest import run_cli

STEPS_PER_EPOCH = 150
ARGS = [
    "data=digits",
    "data.batch_size=8",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.max_epochs=2",
    "trainer=fast",
    "callbacks=lean",  # no plots or evaluation report: the signal handling is added in code
    "logger=csv",
    "extras.print_config=false",
]


def start_and_signal(tmp_path: Path, signum: int) -> tuple[subprocess.Popen, Path]:
    """Start a run; once its training loop has started (its log says so), send ``signum``."""
    env = {**os.environ, "IMGCLS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), *ARGS],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((tmp_path / "logs" / "train" / "runs").glob("*/train.log"))
        if logs and TRAINING_STARTED in logs[0].read_text():
            proc.send_signal(signum)
            return proc, logs[0].parent
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the run never started training: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
# SIGINT only: Ctrl-C is passed on as SIGTERM (lifecycle.StopOnSignal), so this one run goes
# through the SIGTERM path too (Lightning's handler, on_exception's save); a separate SIGTERM
# subprocess run repeated the same code at ~25 s. SIGTERM's own name: test below (callback).
@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["SIGINT"])
def test_a_signal_saves_a_resumable_checkpoint_and_resume_repeats_no_step(
    tmp_path: Path, signum: int
) -> None:
    proc, run_dir = start_and_signal(tmp_path, signum)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == name
    command = f"python {REPO_ROOT / 'train.py'} resume={run_dir}"
    assert status["resume"] == command
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted by {name} at epoch ")
    assert stderr.strip().endswith(f"continue with: {command}")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    steps_done = saved["global_step"]
    assert 0 < steps_done < 2 * STEPS_PER_EPOCH  # the state when the signal came

    resumed = run_cli("train.py", f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 1
    assert final["global_step"] == 2 * STEPS_PER_EPOCH  # every step once: none repeated or lost
    assert len(list((tmp_path / "logs" / "train" / "runs").iterdir())) == 1  # in the same dir


def test_a_plain_ctrl_c_still_marks_the_run_interrupted(tmp_path: Path) -> None:
    """Ctrl-C outside a trainer call (data loading) or a second one: not left 'running'."""
    from omegaconf import OmegaConf

    from imgcls.lifecycle import RunDir, interruptible

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    RunDir(tmp_path).write_status("running")
    with pytest.raises(KeyboardInterrupt), interruptible(cfg):
        raise KeyboardInterrupt
    assert RunDir(tmp_path).status()["status"] == "interrupted"


def test_the_interrupt_checkpoint_never_holds_unchecked_losses(tmp_path: Path) -> None:
    """The non-finite loss watch reads its window before the mid-epoch checkpoint is saved."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from imgcls.lifecycle import StopOnSignal

    calls = []
    callback = StopOnSignal(tmp_path)
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        current_epoch=0,
        global_step=3,
        save_checkpoint=lambda path: calls.append(("save", Path(path))),
    )
    module = SimpleNamespace(stop_if_nonfinite=lambda: calls.append("check"))
    callback.on_exception(trainer, module, SIGTERMException())
    assert calls == ["check", ("save", tmp_path / "checkpoints" / "last.ckpt")]
    assert callback.where == "at epoch 0, step 3" and callback.signal_name == "SIGTERM"
    trainer.state.fn = TrainerFn.TESTING  # the module holds the best weights: last.ckpt stays
    callback.on_exception(trainer, module, SIGTERMException())
    assert len(calls) == 2 and callback.where == "while testing"


class SignalAt(pl.Callback):
    """Test helper: send ``signal`` to this process after training step ``step`` (a signal
    name), or raise RuntimeError when epoch ``step`` starts (``signal=kill``: a killed run)."""

    def __init__(self, step: int, signal: str) -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.signal != "kill" and trainer.global_step == self.step:
            signal.raise_signal(signal.Signals[self.signal])

    def on_train_epoch_start(self, trainer, *args) -> None:
        if self.signal == "kill" and trainer.current_epoch == self.step:
            raise RuntimeError("killed")


EXACT = [
    "data=digits",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=1",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "callbacks=lean",
    "logger=csv",
    "test=false",
]


@pytest.mark.parametrize(
    ("stop", "at"),
    [("SIGINT", 4), ("kill", 1)],
    ids=["mid-epoch", "kill"],
)
def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(make_cfg, stop, at):
    """Deterministic CPU: stopped mid-epoch by Ctrl-C, or killed at an epoch boundary, then
    resumed, a run ends with exactly the weights of the same run uninterrupted (RNG states and
    the data order are in the checkpoint)."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from imgcls.train import train

    train(make_cfg("train", EXACT, subdir="whole"))
    stopper = [f"+callbacks.stop._target_={__name__}.SignalAt", f"+callbacks.stop.step={at}"]
    stopped = make_cfg("train", [*EXACT, *stopper, f"+callbacks.stop.signal={stop}"], "part")
    with pytest.raises((SIGTERMException, RuntimeError)):
        train(stopped)
    last = Path(stopped.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == (4 if stop == "SIGINT" else 6)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(make_cfg("train", [*EXACT, f"ckpt_path={last}"], subdir="part"))
    assert not [str(w.message) for w in seen if "Checkpoint directory" in str(w.message)]
    whole = torch.load(make_cfg(subdir="whole").paths.output_dir + "/checkpoints/last.ckpt")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 12
    for name, value in whole["state_dict"].items():
        diff = (resumed["state_dict"][name].double() - value.double()).abs().max()
        assert diff <= 1e-6, name
