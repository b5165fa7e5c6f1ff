"""The evaluation report (eval.py, the EvalReport callback) and class matching by name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imgcls.eval import run as eval_run
from imgcls.train import train

from .conftest import compose_config

TINY = ["data=digits", "trainer.max_epochs=1", "trainer.limit_val_batches=4", "test=false"]


def trained_checkpoint(root: Path, overrides: list[str]) -> Path:
    cfg = compose_config("train", [*TINY, *overrides], root)
    train(cfg)
    return root / "checkpoints" / "last.ckpt"


def evaluate(root: Path, ckpt: Path, overrides: list[str]) -> dict[str, float]:
    eval_run(compose_config("eval", [f"ckpt_path={ckpt}", "logger=csv", *overrides], root))
    return json.loads((root / "metrics.json").read_text())


def test_eval_matches_classes_by_name(tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="imgcls.eval")
    ckpt = trained_checkpoint(tmp_path / "train", ["data.classes=[3,8]"])
    same = evaluate(tmp_path / "same", ckpt, [])
    swapped = evaluate(tmp_path / "swapped", ckpt, ["+data.classes=[8,3]"])
    assert same["test/acc"] > 0.8  # learnt: a 3-vs-8 model read in the wrong order scores < 0.2
    assert swapped["test/acc"] == pytest.approx(same["test/acc"], abs=1e-6)
    assert "outputs matched by name (['3', '8'] -> ['8', '3'])" in caplog.text

    with pytest.raises(SystemExit) as exit_info:
        evaluate(tmp_path / "other", ckpt, ["+data.classes=[3,9]"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "['3', '8']" in line and "['3', '9']" in line
