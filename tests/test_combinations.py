"""Features where they meet: the combination a researcher uses, trained for real (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import compose_config, run_cli


@pytest.mark.slow
def test_ema_class_weights_mixup_finetuning_under_ddp_learn_and_evaluate_as_one_process(
    tmp_path: Path,
) -> None:
    """EMA + class weights + mixup + a head-first fine-tuning schedule + 2-process DDP on digits:
    the run learns (measured 0.869 test accuracy), writes its evaluation report, and its test
    metrics equal a single-process evaluation of the checkpoint it tested."""
    finetuning = "+callbacks.finetuning._target_=imgcls.callbacks.finetuning.HeadFirstFinetuning"
    train = run_cli(
        "train.py",
        "data=digits",
        "model=mlp",
        "callbacks=ema",
        finetuning,
        "+callbacks.finetuning.unfreeze_at_epoch=1",
        "model.class_weights=auto",
        "model.mixup_alpha=0.2",
        "trainer=ddp_cpu",
        "trainer.max_epochs=4",
        "data.batch_size=32",
        "logger=csv",
        "extras.print_config=false",
        "~callbacks.rich_progress_bar",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    trained = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert trained["test/acc"] >= 0.8, trained  # chance is 0.1
    assert (run / "report" / "per_class.csv").is_file()
    tested = run / trained["sources"]["test/acc"]["checkpoint"]

    # in this process (eval.py's command line is tested in test_cli): saves a ~10 s subprocess
    from imgcls.eval import run as eval_run

    eval_dir = tmp_path / "eval"
    overrides = [f"ckpt_path={tested}", "trainer.accelerator=cpu", "gallery=false"]
    eval_run(compose_config("eval", overrides, eval_dir))
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-4)
