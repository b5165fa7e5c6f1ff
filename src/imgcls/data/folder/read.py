"""Reading a folder's images (decoded into memory, or checked and streamed) and their statistics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from imgcls.data.base import Split
from imgcls.data.folder.scan import FolderIndex
from imgcls.data.transforms import resize_uint8
from imgcls.imaging import check_image_file, load_image_tensor
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

MAX_LISTED = 20


def decode_image(path: Path, channels: int, size: int, resize: str = "squash") -> torch.Tensor:
    return resize_uint8(load_image_tensor(path, channels=channels)[None], size, resize)[0]


class FileImages:
    """Streaming (``in_memory=false``): a uint8 ``[N, C, S, S]`` stand-in decoding on access (an
    int: one image, a slice: a batch, a mask or index tensor: a lazy subset); pickles as paths."""

    dtype = torch.uint8

    def __init__(
        self, paths: Sequence[Path], channels: int, size: int, workers: int = 1, resize="squash"
    ) -> None:
        self.paths, self.channels, self.size, self.workers = list(paths), channels, size, workers
        self.resize = resize
        self.shape = (len(self.paths), channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, path: Path) -> torch.Tensor:
        return decode_image(path, self.channels, self.size, self.resize)

    def _subset(self, paths: Sequence[Path]) -> FileImages:
        return FileImages(paths, self.channels, self.size, self.workers, self.resize)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor | FileImages:
        if isinstance(key, torch.Tensor):
            indices = key.nonzero().flatten() if key.dtype == torch.bool else key.flatten()
            return self._subset([self.paths[i] for i in indices.tolist()])
        if not isinstance(key, slice):
            return self._decode(self.paths[int(key)])
        if not self.paths[key]:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return torch.stack(list(pool.map(self._decode, self.paths[key])))

    def concat(self, other: FileImages) -> FileImages:
        return self._subset(self.paths + other.paths)


def read_splits(
    index: FolderIndex,
    channels: int,
    size: int,
    in_memory: bool,
    on_bad_image: str,
    workers: int,
    k_fold: bool,
    resize: str = "squash",
) -> dict[str, Split]:
    """Every split as (images, labels): decoded, or ``FileImages`` (headers checked) streaming.
    Unreadable images are listed once, then skipped or fatal (``on_bad_image``)."""
    root = index.layout.root

    def read_one(path: Path) -> torch.Tensor | Path | str:
        try:
            if in_memory:
                return decode_image(path, channels, size, resize)
            check_image_file(path)
            return path
        except UserError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{path}: unreadable image ({type(err).__name__}: {err})"

    items = [(split, path, label) for split, files in index.files.items() for path, label in files]
    log.info(f"{'decoding' if in_memory else 'checking'} {len(items)} images from data.root={root}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(read_one, [path for _, path, _ in items]))
    bad = [r for r in results if isinstance(r, str)]
    if bad and on_bad_image == "error":
        more = f"; ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise UserError(
            f"{len(bad)} unreadable images in data.root={root}: {'; '.join(bad[:MAX_LISTED])}"
            f"{more}; fix or delete them, or set data.on_bad_image=skip"
        )
    if bad:
        log.warning(
            f"skipping {len(bad)} of {len(items)} images that cannot be read "
            "(data.on_bad_image=skip):\n  " + "\n  ".join(bad)
        )
    splits: dict[str, Split] = {}
    for split in index.files:
        kept = [
            (result, label)
            for (s, _, label), result in zip(items, results, strict=True)
            if s == split and not isinstance(result, str)
        ]
        if not kept and (split != "val" or not k_fold):
            raise UserError(f"data.root={root}: no readable images left in the {split} split")
        labels = torch.tensor([label for _, label in kept], dtype=torch.long)
        if not in_memory:
            images = FileImages([path for path, _ in kept], channels, size, workers, resize)
        elif kept:
            images = torch.stack([image for image, _ in kept])
        else:
            images = torch.empty((0, channels, size, size), dtype=torch.uint8)
        splits[split] = (images, labels)
    names = index.layout.class_names
    missing = [names[i] for i in sorted(set(range(len(names))) - set(splits["train"][1].tolist()))]
    if missing:
        raise UserError(
            f"data.root={root}: no readable training images for classes {missing}; "
            "add images to those class folders"
        )
    if in_memory:
        total = sum(images.numel() for images, _ in splits.values())
        log.info(
            f"decoded {len(items) - len(bad)} images at {channels}x{size}x{size} "
            f"({total / 1e6:.0f} MB in memory)"
        )
    return splits


# normalize=auto: the training split's per-channel mean/std, cached in root under a key of its
# files and every split setting, so later runs, eval.py and predict.py normalise like training
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


def _cache(root: Path) -> dict[str, Any]:
    try:
        cache = json.loads((root / STATS_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def read_cached(root: Path, key: str) -> Stats | None:
    """The cached statistics under ``key``, or ``None`` (no cache, no entry, unreadable)."""
    try:
        entry = _cache(root)[key]
        return {name: [float(v) for v in entry[name]] for name in ("mean", "std")}
    except (ValueError, KeyError, TypeError):
        return None


def write_cached(root: Path, key: str, stats: Stats) -> None:
    """Add ``stats`` under ``key`` to the cache (atomically); a read-only folder only logs."""
    path, cache = root / STATS_CACHE, _cache(root)
    cache[key] = stats
    try:
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
