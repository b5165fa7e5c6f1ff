"""Provenance: the code's commit and local changes, the versions, and the data fingerprint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import torch

from imgcls import provenance


def _datamodule(images: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
    half = len(labels) // 2
    splits = {"train": (images[:half], labels[:half]), "test": (images[half:], labels[half:])}
    return SimpleNamespace(splits=splits, class_names=["a", "b"])


def _repo(path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    path.mkdir()
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (path / "model.py").write_text("width = 8\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "first")
    return path


def test_data_fingerprint_changes_with_pixels_and_labels() -> None:
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10) % 2
    base = provenance.data_fingerprints(_datamodule(images, labels))
    same = provenance.data_fingerprints(_datamodule(images.clone(), labels.clone()))
    assert base == same
    assert base["train"]["size"] == 5
    pixel = images.clone()
    pixel[1, 0, 2, 2] ^= 1  # one bit of one training pixel
    changed = provenance.data_fingerprints(_datamodule(pixel, labels))
    assert changed["train"]["sha256"] != base["train"]["sha256"]
    assert changed["test"] == base["test"]
    relabelled = labels.clone()
    relabelled[7] = 1 - relabelled[7]
    changed = provenance.data_fingerprints(_datamodule(images, relabelled))
    assert changed["test"]["sha256"] != base["test"]["sha256"]


def test_streamed_files_fingerprint_by_name_size_and_time(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")
    lazy = type("FileImages", (), {"paths": files, "__len__": lambda self: len(files)})()
    module = SimpleNamespace(splits={"train": (lazy, torch.tensor([0, 1, 0]))})
    before = provenance.data_fingerprints(module)
    files[2].write_bytes(b"xy")
    assert provenance.data_fingerprints(module) != before


def test_commit_and_dirty_follow_the_code(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "code")
    clean = provenance.git_state(repo)
    assert clean["dirty"] is False and len(clean["commit"]) == 40
    (repo / "model.py").write_text("width = 16\n")
    dirty = provenance.git_state(repo)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True
    assert "+width = 16" in dirty["diff"]
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "wider"], check=True)
    committed = provenance.git_state(repo)
    assert committed["commit"] != clean["commit"] and committed["dirty"] is False


def test_write_and_compare_runs(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "code")
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    old_info = provenance.collect(_datamodule(images, labels), code_dir=repo)
    (repo / "model.py").write_text("width = 16\n")
    new_info = provenance.collect(_datamodule(images + 1, labels), code_dir=repo)
    old, new = tmp_path / "old", tmp_path / "new"
    provenance.write(old, old_info)
    provenance.write(new, new_info)
    assert not (old / provenance.DIFF_FILE).exists()
    assert "+width = 16" in (new / provenance.DIFF_FILE).read_text()
    saved = json.loads((new / provenance.PROVENANCE_FILE).read_text())
    assert saved["git"]["dirty"] is True and "diff" not in saved["git"]
    assert saved["versions"]["torch"] == torch.__version__
    assert any(p.lower().startswith("torch==") for p in saved["packages"])
    (old / "metrics.json").write_text(json.dumps({"test/acc": 0.5, "val/acc": 0.25}))
    (new / "metrics.json").write_text(json.dumps({"test/acc": 0.75, "val/acc": 0.25}))
    text = provenance.compare(old, new)
    assert "test/acc" in text and "0.5000" in text and "0.7500" in text and "+0.2500" in text
    assert "git.dirty: False -> True" in text
    assert "data.train.sha256:" in text and "data.test.sha256:" in text
    assert "git.commit:" not in text and "data.train.size" not in text  # the same in both
    same = provenance.compare(old, old)
    assert "provenance: same code, versions, data" in same


def test_outside_a_checkout_it_records_that(tmp_path: Path) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    state = provenance.git_state(outside)
    assert state["commit"] is None and state["note"] == "not a git checkout"
    info = provenance.collect(SimpleNamespace(), code_dir=outside)
    provenance.write(tmp_path / "run", info)
    saved = json.loads((tmp_path / "run" / provenance.PROVENANCE_FILE).read_text())
    assert saved["git"]["note"] == "not a git checkout" and saved["data"] == {}
