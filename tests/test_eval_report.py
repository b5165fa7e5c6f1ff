"""The evaluation report (eval.py, the EvalReport callback) and class matching by name."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import classification_report

import imgcls
from imgcls.callbacks.eval_report import EvalReport
from imgcls.eval import run as eval_run
from imgcls.evaluation.report import ece, fit_temperature, grad_cam, write_report
from imgcls.export import run as export_run
from imgcls.train import train
from imgcls.utils.checkpoint import restore

from .conftest import compose_config, run_cli

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
    ckpt = trained_checkpoint(tmp_path / "train", ["data.classes=[3,8]", "trainer.max_epochs=3"])
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


NINE = "data.classes=[0,1,3,4,5,6,7,8,9]"  # 325 test images: two ranks get unequal shards


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny 9-class digits model (its checkpoint) and eval.py's report on it (its run dir)."""
    root = tmp_path_factory.mktemp("report")
    ckpt = trained_checkpoint(root / "train", [NINE, "trainer.max_epochs=2"])
    evaluate(root / "eval", ckpt, ["tta=flip", "gallery=true"])
    return ckpt, root / "eval"


def split_logits(ckpt: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and labels on a split, computed here without the report's code."""
    restored = restore(ckpt)
    restored.datamodule.setup("test" if split == "test" else "fit")
    loader = getattr(restored.datamodule, f"{split}_dataloader")()
    model = restored.model.eval()
    with torch.no_grad():
        pairs = [(model(restored.datamodule.preprocess(x)), y) for x, y in loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def test_per_class_numbers_agree_with_scikit_learn(evaluated) -> None:
    ckpt, run = evaluated
    logits, targets = split_logits(ckpt, "test")
    expected = classification_report(targets, logits.argmax(1), output_dict=True, zero_division=0)
    rows = {r["class"]: r for r in csv.DictReader((run / "report" / "per_class.csv").open())}
    names = ["0", "1", "3", "4", "5", "6", "7", "8", "9"]
    for i, name in enumerate(names):
        theirs, ours = expected[str(i)], rows[name]
        for key in ("precision", "recall", "f1"):
            assert float(ours[key]) == pytest.approx(
                theirs[key.replace("f1", "f1-score")], abs=1e-4
            )
        assert int(ours["support"]) == theirs["support"]
    for average in ("macro", "weighted"):
        assert float(rows[f"{average} avg"]["f1"]) == pytest.approx(
            expected[f"{average} avg"]["f1-score"], abs=1e-4
        )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert 0.5 < metrics["test/acc"] < 1  # learnt, and there are mistakes to show


def test_temperature_on_validation_lowers_ece(evaluated) -> None:
    ckpt, _ = evaluated
    logits, targets = split_logits(ckpt, "val")
    temperature = fit_temperature(logits, targets)
    assert temperature != pytest.approx(1.0, abs=1e-3)
    before, after = ece(logits.softmax(1), targets), ece((logits / temperature).softmax(1), targets)
    assert after <= before


def test_report_has_every_part(evaluated) -> None:
    _, run = evaluated
    report = run / "report"
    for name in ("confusion_matrix", "confusion_matrix_normalized", "reliability", "mistakes"):
        assert (report / f"{name}.png").stat().st_size > 1000
    rows = list(csv.reader((report / "confusion_matrix.csv").open()))
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 325  # every test image once
    text = (report / "report.md").read_text()
    for part in (
        "test/acc_top5",
        "test/ece_calibrated",
        "test/acc_tta_flip",
        "Temperature",
        " -> ",
    ):
        assert part in text, part
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src='confusion" not in page
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/ece_calibrated"] != metrics["test/ece"]


def test_tta_with_identity_views_equals_plain_accuracy(evaluated, tmp_path: Path) -> None:
    ckpt, _ = evaluated
    restored = restore(ckpt)
    report = EvalReport(tmp_path, tta="flip")
    report.views = [lambda x: x, lambda x: x.clone()]  # two views equal to the image itself
    trainer = pl.Trainer(callbacks=[report], logger=False, enable_progress_bar=False)
    trainer.test(restored.model, datamodule=restored.datamodule, verbose=False)
    assert report.headline["test/acc_tta_flip"] == report.headline["test/acc"]


def test_calibrate_stores_the_temperature_for_predict_api_and_export(evaluated, tmp_path) -> None:
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(evaluated[0], ckpt)
    digits = [
        torch.randint(
            0, 256, (1, 8, 8), generator=torch.Generator().manual_seed(i), dtype=torch.uint8
        )
        for i in range(6)
    ]
    plain = imgcls.load_model(ckpt).predict(digits)
    evaluate(tmp_path / "eval", ckpt, ["calibrate=true", "gallery=false"])
    model = imgcls.load_model(ckpt)
    temperature = model.temperature
    assert temperature == pytest.approx(fit_temperature(*split_logits(ckpt, "val")), rel=1e-4)
    calibrated = model.predict(digits, topk=3)
    assert [p.label for p in calibrated] == [p.label for p in plain]  # argmax unchanged
    for before, after in zip(plain, calibrated, strict=True):
        logp = torch.tensor(list(before.probabilities.values())).log()
        expected = (logp / temperature).softmax(0)
        assert list(after.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-5)
        assert [label for label, _ in after.top] == [label for label, _ in before.top[:3]]
    exported = export_run(
        compose_config("export", [f"ckpt_path={ckpt}", "format=torchscript"], tmp_path / "export")
    )
    from_export = imgcls.load_model(exported).predict(digits)
    for a, b in zip(from_export, calibrated, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-4)


@pytest.mark.slow
def test_two_process_report_equals_the_single_process_one(evaluated, tmp_path: Path) -> None:
    ckpt, single = evaluated  # 325 test images: ranks get 163 and 162
    ddp = run_cli(
        "eval.py",
        f"ckpt_path={ckpt}",
        "trainer=ddp_cpu",
        "tta=flip",
        "logger=csv",
        "extras.print_config=false",
        cwd=tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    for name in ("per_class.csv", "confusion_matrix.csv"):
        assert (run / "report" / name).read_text() == (single / "report" / name).read_text()
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run, single))
    for key in ("test/acc", "test/acc_top5", "test/ece", "test/acc_tta_flip", "test/f1_macro"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert ours["test/ece_calibrated"] == pytest.approx(theirs["test/ece_calibrated"], abs=1e-4)
    assert (run / "report" / "mistakes.png").is_file()


def test_gallery_explains_conv_nets_and_says_so_for_an_mlp(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images, targets = torch.randn(6, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(3),
    )
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    for name, net in (("conv", conv), ("mlp", mlp)):
        logits = net(images).detach()
        wrong = torch.nn.functional.one_hot((targets[:2] + 1) % 3, 3).float()  # two mistakes
        rows = {"logits": logits, "targets": targets, "images": images[:2]}
        rows |= {"wrong_true": targets[:2], "wrong_logits": wrong}
        write_report(tmp_path / name, rows, ["a", "b", "c"], net=net)
        text = (tmp_path / name / "report.md").read_text()
        assert ("No Grad-CAM: the net has no convolutional layer" in text) == (name == "mlp")
        assert "mistakes.png" in text and (tmp_path / name / "mistakes.png").is_file()
    cams = grad_cam(conv, images[:2], torch.tensor([1, 2]))
    assert cams.shape == (2, 12, 12) and cams.amax(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0])
