"""What a run was made from (docs/studies.md): commit, libraries, machine and exact data."""

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from imgcls.utils.checks import read_json
from imgcls.utils.runs import write_json

PROVENANCE_FILE = "provenance.json"
DIFF_FILE = "code.diff"
CODE_DIR = Path(__file__).resolve().parent
LIBRARIES = {"lightning": "pytorch-lightning", "hydra": "hydra-core"}  # by distribution


def git(code_dir: Path, *args: str) -> str | None:
    """The output of ``git -C code_dir *args``; None: no git, not a checkout, or it hung."""
    command = ["git", "-C", str(code_dir), *args]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(code_dir: Path = CODE_DIR) -> dict[str, Any]:
    """Commit, dirty flag and ``git diff HEAD`` of the checkout holding ``code_dir``."""
    top = git(code_dir, "rev-parse", "--show-toplevel")
    if top is None:
        return {"checkout": None, "commit": None, "dirty": None, "note": "not a git checkout"}
    changes = (git(code_dir, "status", "--porcelain") or "").splitlines()
    return {
        "checkout": top.strip(),
        "commit": (git(code_dir, "rev-parse", "HEAD") or "").strip() or None,
        "dirty": bool(changes),
        "changed_files": [line[3:] for line in changes],
        "diff": git(code_dir, "diff", "HEAD") or "",
    }


def fingerprint(images: Any, labels: torch.Tensor) -> str:
    """sha256 of a split's uint8 images (streamed files: names, sizes, times) and labels."""
    digest = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.cpu().contiguous().numpy().tobytes())
    else:
        for path in map(Path, images.paths):
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(labels.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_fingerprints(datamodule: Any) -> dict[str, Any]:
    """Size and fingerprint of each split the datamodule holds after ``setup``."""
    splits = getattr(datamodule, "splits", None) or {}
    return {name: {"size": len(x), "sha256": fingerprint(x, y)} for name, (x, y) in splits.items()}


def collect(datamodule: Any, code_dir: Path = CODE_DIR) -> dict[str, Any]:
    """Everything needed to tell whether two runs were made from the same code, stack and data."""
    versions = {name: importlib.metadata.version(dist) for name, dist in LIBRARIES.items()}
    versions |= {"python": platform.python_version(), "torch": torch.__version__}
    versions["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        devices = [f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"]
    packages = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()}
    return {
        "git": git_state(code_dir),
        "versions": versions,
        "packages": sorted(packages, key=str.lower),  # what `pip freeze` lists
        "devices": devices,
        "host": platform.node(),
        "command": sys.argv,
        "datamodule": type(datamodule).__name__,
        "class_names": list(getattr(datamodule, "class_names", None) or []),
        "data": data_fingerprints(datamodule),
    }


def write(run_path: Path, info: dict[str, Any]) -> None:
    """``provenance.json``, and the uncommitted changes as ``code.diff`` when there are any."""
    run_path = Path(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    git = dict(info["git"])
    if git.pop("diff", "") and git.get("dirty"):
        (run_path / DIFF_FILE).write_text(info["git"]["diff"])
        git["diff_file"] = DIFF_FILE
    write_json(run_path / PROVENANCE_FILE, {**info, "git": git})


def hparams(run_path: Path) -> dict[str, Any]:
    """The run's provenance as a few hyperparameters (commit, dirty, data fingerprints)."""
    info = read_json(Path(run_path) / PROVENANCE_FILE)
    git = info.get("git") or {}
    params = {f"provenance/{key}": str(git.get(key)) for key in ("commit", "dirty")}
    for split, entry in (info.get("data") or {}).items():
        if entry.get("sha256"):
            params[f"provenance/data_{split}"] = entry["sha256"][:12]
    return params


def compare(old_run: Path, new_run: Path) -> str:
    """Old and new final metrics side by side, then what differs in their provenance."""
    import pandas as pd

    metrics = {}
    for label, run in (("old", old_run), ("new", new_run)):
        found = read_json(Path(run) / "metrics.json")
        metrics[label] = {k: v for k, v in found.items() if k != "sources"}
    table = pd.DataFrame(metrics, columns=["old", "new"]).apply(pd.to_numeric, errors="coerce")
    table = table.sort_index()
    table["new - old"] = (table.new - table.old).map(lambda d: "" if pd.isna(d) else f"{d:+.4f}")
    lines = [table.to_string(float_format="{:.4f}".format, na_rep="-")]
    old, new = (read_json(Path(run) / PROVENANCE_FILE) for run in (old_run, new_run))
    if not old or not new:
        return "\n".join([*lines, f"provenance: none recorded in {new_run if old else old_run}"])
    flat = [pd.json_normalize(info).iloc[0].to_dict() for info in (old, new)]
    skip = ("command", "host", "packages", "git.checkout", "git.changed_files", "git.diff_file")
    for key in sorted(flat[0].keys() | flat[1].keys()):  # git.commit, versions.torch, data...
        if not key.startswith(skip) and flat[0].get(key) != flat[1].get(key):
            lines.append(f"  {key}: {flat[0].get(key)} -> {flat[1].get(key)}")
    changed = sorted(set(old.get("packages", [])) ^ set(new.get("packages", [])))
    if changed:
        lines.append(f"  packages: {len(changed)} differ ({', '.join(changed[:6])} ...)")
    same = "provenance: same code, versions, data"
    return "\n".join([lines[0], "provenance differs:" if lines[1:] else same, *lines[1:]])
