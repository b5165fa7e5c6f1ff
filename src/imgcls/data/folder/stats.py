"""``normalize=auto``: per-channel statistics of a folder's training split, cached beside it.

The cache (``root/imgcls_stats.json``) maps a key of the training split (its files and every
split setting) to its mean and std, so a second run, ``eval.py`` or ``predict.py`` normalise like
training did without computing them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from imgcls.data.folder.scan import FolderIndex

log = logging.getLogger(__name__)

#: per-channel mean/std of the training split for ``normalize=auto``, cached in ``root``
STATS_CACHE = "imgcls_stats.json"

Stats = dict[str, list[float]]  # {"mean": [...], "std": [...]}


def stats_key(index: FolderIndex, settings: dict[str, Any]) -> str:
    """Identifies a training split: the files (paths, sizes, labels) and the split ``settings``."""
    root = index.layout.root
    files = [
        [split, str(path.relative_to(root)), path.stat().st_size, label]
        for split, items in sorted(index.files.items())
        for path, label in items
    ]
    encoded = json.dumps({"files": files, **settings}, sort_keys=True, default=str).encode()
    return hashlib.sha1(encoded).hexdigest()[:16]


def read_cached(root: Path, key: str) -> Stats | None:
    """The cached statistics under ``key``, or ``None`` (no cache, no entry, unreadable)."""
    try:
        entry = json.loads((root / STATS_CACHE).read_text())[key]
        return {
            "mean": [float(v) for v in entry["mean"]],
            "std": [float(v) for v in entry["std"]],
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(root: Path, key: str, stats: Stats) -> None:
    """Add ``stats`` under ``key`` to the cache (atomically); a read-only folder only logs."""
    path = root / STATS_CACHE
    try:
        try:
            cache = json.loads(path.read_text())
            if not isinstance(cache, dict):
                cache = {}
        except (OSError, ValueError):
            cache = {}
        cache[key] = stats
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # read-only data: recompute next time
        log.info(f"normalisation statistics not cached ({path}: {err.strerror or err})")


def compute_stats(images: Any) -> Stats:
    """Per-channel mean and std (in [0, 1] units) of uint8 images ``[N, C, H, W]``, in float64
    chunks (``images`` may be ``FileImages``: each chunk is decoded when it is needed)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 1024):
        chunk = images[start : start + 1024].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt().clamp(min=1 / 255)
    return {"mean": mean.tolist(), "std": std.tolist()}
