"""What a run was made from: the code's commit, the libraries, the machine and the exact data.

``collect(datamodule)`` after the datamodule's ``setup``; ``write(run_path, info)`` saves
``provenance.json`` (and ``code.diff`` when the code had uncommitted changes);
``compare(old_run, new_run)`` prints two runs' final metrics side by side and what differs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PROVENANCE_FILE = "provenance.json"
DIFF_FILE = "code.diff"
CODE_DIR = Path(__file__).resolve().parent
#: libraries named on their own (the rest are in ``packages``)
LIBRARIES = {"lightning": "pytorch-lightning", "hydra": "hydra-core"}


def _git(code_dir: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(code_dir), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return None


def git_state(code_dir: Path = CODE_DIR) -> dict[str, Any]:
    """Commit, dirty flag and ``git diff HEAD`` of the checkout holding ``code_dir``."""
    top = _git(code_dir, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0:
        error = (top.stderr.strip().splitlines() or [""])[0] if top else "git not found"
        note = "not a git checkout" if "not a git repository" in error else f"git: {error}"
        return {"checkout": None, "commit": None, "dirty": None, "note": note}
    head = _git(code_dir, "rev-parse", "HEAD")
    status = _git(code_dir, "status", "--porcelain")
    diff = _git(code_dir, "diff", "HEAD")
    changes = status.stdout.splitlines() if status and status.returncode == 0 else []
    return {
        "checkout": top.stdout.strip(),
        "commit": head.stdout.strip() if head and head.returncode == 0 else None,
        "dirty": bool(changes),
        "changed_files": [line[3:] for line in changes],
        "diff": diff.stdout if diff and diff.returncode == 0 else "",
    }


def versions() -> dict[str, Any]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    found["cuda"] = torch.version.cuda
    for name, dist in LIBRARIES.items():
        try:
            found[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def packages() -> list[str]:
    """``name==version`` of every installed distribution (what ``pip freeze`` lists)."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()}
    return sorted(names, key=str.lower)


def devices() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"]


def _hash_files(paths: Any, digest: Any) -> None:
    """Names, sizes and modification times (streamed data: reading every file is not cheap)."""
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())


def fingerprint(images: Any, labels: Any) -> str | None:
    """sha256 of a split as the model sees it: uint8 tensors and labels, or the files streamed."""
    digest = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    elif getattr(images, "paths", None) is not None:
        _hash_files(images.paths, digest)
    else:
        return None
    if isinstance(labels, torch.Tensor):
        digest.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_fingerprints(datamodule: Any) -> dict[str, Any]:
    """One fingerprint per split held after ``setup``; else one of the files under its data dir."""
    splits = getattr(datamodule, "splits", None) or {}
    found: dict[str, Any] = {}
    for name, split in splits.items():
        images, labels = split if isinstance(split, (tuple, list)) else (split, None)
        found[name] = {"size": len(images), "sha256": fingerprint(images, labels)}
    if not found and getattr(datamodule, "data_dir", None):
        root = Path(datamodule.data_dir)
        digest = hashlib.sha256()
        _hash_files(sorted(p for p in root.rglob("*") if p.is_file()), digest)
        found["files"] = {"root": str(root), "sha256": digest.hexdigest()}
    return found


def collect(datamodule: Any, code_dir: Path = CODE_DIR) -> dict[str, Any]:
    """Everything needed to tell whether two runs were made from the same code, stack and data."""
    return {
        "git": git_state(code_dir),
        "versions": versions(),
        "packages": packages(),
        "devices": devices(),
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
    diff = git.pop("diff", "")
    if git.get("dirty") and diff:
        (run_path / DIFF_FILE).write_text(diff)
        git["diff_file"] = DIFF_FILE
    text = json.dumps({**info, "git": git}, indent=2, sort_keys=True, default=str)
    (run_path / PROVENANCE_FILE).write_text(text + "\n")


def hparams(run_path: Path) -> dict[str, Any]:
    """The run's provenance as a few hyperparameters (commit, dirty, data fingerprints)."""
    info = _read(Path(run_path) / PROVENANCE_FILE)
    git, data = info.get("git") or {}, info.get("data") or {}
    params = {
        "provenance/commit": str(git.get("commit")),
        "provenance/dirty": str(git.get("dirty")),
    }
    for split, entry in data.items():
        if isinstance(entry, dict) and entry.get("sha256"):
            params[f"provenance/data_{split}"] = entry["sha256"][:12]
    return params


# ------------------------------------------------------------------------------ comparing
def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    pairs = [("commit", "git", "commit"), ("uncommitted changes", "git", "dirty")]
    pairs += [(f"{k} version", "versions", k) for k in ["python", "torch", *LIBRARIES, "cuda"]]
    pairs += [(f"data {k}", "data", k) for k in old.get("data", {}) | new.get("data", {})]
    lines = []
    for label, section, key in pairs:
        a, b = (info.get(section, {}).get(key) for info in (old, new))
        a, b = (v.get("sha256") if section == "data" and v else v for v in (a, b))
        if a != b:
            lines.append(f"  {label}: {_fmt(a)} -> {_fmt(b)}")
    if old.get("devices") != new.get("devices"):
        lines.append(f"  devices: {old.get('devices')} -> {new.get('devices')}")
    changed = sorted(set(old.get("packages", [])) ^ set(new.get("packages", [])))
    if changed:
        lines.append(f"  packages: {len(changed)} differ ({', '.join(changed[:6])} ...)")
    return lines


def compare(old_run: Path, new_run: Path) -> str:
    """Old and new final metrics side by side, then what differs in their provenance."""
    old_run, new_run = Path(old_run), Path(new_run)
    old_m, new_m = (_read(run / "metrics.json") for run in (old_run, new_run))
    old_m, new_m = ({k: v for k, v in m.items() if k != "sources"} for m in (old_m, new_m))
    width = max([len(k) for k in old_m | new_m] + [6])
    lines = [f"{'metric':<{width}}  {'old':>10}  {'new':>10}  {'new - old':>10}"]
    for key in sorted(old_m | new_m):
        a, b = (m.get(key) for m in (old_m, new_m))
        # metrics.json may hold a number or {"value": ..., "from": ...}
        a, b = (v.get("value") if isinstance(v, dict) else v for v in (a, b))
        delta = f"{b - a:+.4f}" if all(isinstance(v, (int, float)) for v in (a, b)) else ""
        lines.append(f"{key:<{width}}  {_fmt(a):>10}  {_fmt(b):>10}  {delta:>10}")
    old_p, new_p = _read(old_run / PROVENANCE_FILE), _read(new_run / PROVENANCE_FILE)
    if not old_p or not new_p:
        return "\n".join([*lines, f"provenance: none recorded in {new_run if old_p else old_run}"])
    diffs = _differences(old_p, new_p)
    lines.append("provenance differs:" if diffs else "provenance: same code, versions, data")
    return "\n".join(lines + diffs)
