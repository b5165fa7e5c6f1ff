"""Your own images: one folder per class, optionally already split into train/ val/ test/.

Layouts (class names are the folder names, sorted; labels follow that order):

- ``root/<class>/*.jpg``: split by ``split=[train, val, test]`` fractions, stratified per class.
  The test images are drawn with a fixed seed (the same test set for every run and seed); the
  validation images with ``seed``.
- ``root/train/<class>/*``, ``root/val/<class>/*`` (or ``valid/``, ``validation/``),
  ``root/test/<class>/*``: used as given. A missing ``val/`` or ``test/`` is carved from ``train/``
  by the same fractions.

Files are found recursively below each class folder; files without an image suffix are ignored.
With ``in_memory=true`` (default) every image is decoded once (thread pool) to uint8
``[C, image_size, image_size]`` and kept in memory (a 3x64x64 image is 12 KB: 100k images ~
1.2 GB; at 224 px, 150 KB each), so the base's fast in-memory path serves batches. With
``in_memory=false`` nothing is kept: setup only checks each file's header, and DataLoader workers
decode every image from disk when a batch needs it (folders larger than RAM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgcls.data.base import ImageDataModule, Split
from imgcls.data.transforms import resize_uint8
from imgcls.imaging import IMAGE_SUFFIXES, check_image_file, load_image_tensor
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: per-channel mean/std of the training split for ``normalize=auto``, cached in ``root``
STATS_CACHE = "imgcls_stats.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = (0.449,), (0.226,)
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
TEST_SPLIT_SEED = 0  # fixed: carving test images never depends on the run's seed
NORMALIZE_MODES = ("imagenet", "auto", "none")
BAD_IMAGE_MODES = ("skip", "error")
MAX_LISTED = 20

Item = tuple[Path, int]  # image file, label


@dataclass
class FolderIndex:
    """The image files of every split, found by scanning (nothing decoded yet)."""

    layout: str  # "classes" (root/<class>) or "splits" (root/train/<class> ...)
    class_names: list[str]
    files: dict[str, list[Item]] = field(default_factory=dict)  # train, val, test
    ignored: int = 0  # non-image files


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d))


def _image_files(class_dir: Path) -> tuple[list[Path], int]:
    """Image files below ``class_dir`` (recursive, sorted) and the count of other files."""
    images, ignored = [], 0
    for path in sorted(class_dir.rglob("*")):
        relative = path.relative_to(class_dir).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            ignored += 1
    return images, ignored


def _take_stratified(
    items: list[Item], fraction: float, seed: int
) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (rest, taken): ``fraction`` of the images taken, stratified, seeded.

    Every class gives ``floor(fraction * n_class)`` images; the remainder up to
    ``round(fraction * n)`` comes from the classes with the largest fractional parts (so small
    classes still add up to the requested total). At least one image per class stays in ``rest``.
    """
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    labels = sorted(by_class)
    exact = {label: fraction * len(by_class[label]) for label in labels}
    counts = {label: math.floor(exact[label]) for label in labels}
    extra = math.floor(fraction * len(items) + 0.5) - sum(counts.values())
    tie_break = torch.rand(len(labels), generator=generator).tolist()
    order = sorted(labels, key=lambda c: (-(exact[c] - counts[c]), tie_break[labels.index(c)]))
    for label in order[: max(extra, 0)]:
        counts[label] += 1
    rest, taken = [], []
    for label in labels:
        members = by_class[label]
        k = min(counts[label], len(members) - 1)
        perm = torch.randperm(len(members), generator=generator).tolist()
        taken += [members[i] for i in sorted(perm[:k])]
        rest += [members[i] for i in sorted(perm[k:])]
    return rest, taken


def decode_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image file as uint8 ``[channels, size, size]``; unreadable files raise ``UserError``."""
    return resize_uint8(load_image_tensor(path, channels=channels).unsqueeze(0), size)[0]


class FileImages:
    """A folder's images read from disk on access, standing in for a uint8 ``[N, C, S, S]`` tensor.

    The streaming path (``in_memory=false``): an int gives one decoded image, a slice a stacked
    batch, a bool mask or an index tensor a (still lazy) subset. Pickling it for DataLoader
    workers sends only the paths.
    """

    dtype = torch.uint8

    def __init__(self, paths: Sequence[Path], channels: int, size: int, workers: int = 1) -> None:
        self.paths, self.channels, self.size, self.workers = list(paths), channels, size, workers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, path: Path) -> torch.Tensor:
        return decode_image(path, self.channels, self.size)

    def _subset(self, paths: Sequence[Path]) -> FileImages:
        return FileImages(paths, self.channels, self.size, self.workers)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor | FileImages:
        if isinstance(key, torch.Tensor):
            indices = key.nonzero().flatten() if key.dtype == torch.bool else key.flatten()
            return self._subset([self.paths[i] for i in indices.tolist()])
        if isinstance(key, slice):
            paths = self.paths[key]
            if not paths:
                return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                return torch.stack(list(pool.map(self._decode, paths)))
        return self._decode(self.paths[int(key)])

    def concat(self, other: FileImages) -> FileImages:
        return self._subset(self.paths + other.paths)


def _listing(entries: Sequence[str]) -> str:
    shown = "; ".join(entries[:MAX_LISTED])
    more = len(entries) - MAX_LISTED
    return shown + (f"; ... and {more} more" if more > 0 else "")


class FolderDataModule(ImageDataModule):
    """Image classification on a folder of class folders (``data=folder data.root=PATH``)."""

    native_size = 64

    def __init__(
        self,
        root: str | None = None,
        image_size: int | None = 64,
        grayscale: bool = False,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        normalize: str = "imagenet",
        on_bad_image: str = "skip",
        decode_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        if root is None or not str(root).strip():
            raise UserError(
                "data=folder needs data.root=PATH: a folder of class folders (PATH/<class>/*.jpg) "
                "or of train/ val/ test/ folders holding class folders"
            )
        self.root = Path(str(root)).expanduser()
        self.grayscale = bool(grayscale)
        self.split_fractions = self._check_split(split)
        if normalize not in NORMALIZE_MODES:
            raise UserError(
                f"data.normalize={normalize!r} is not supported; use one of "
                f"{list(NORMALIZE_MODES)} (or set data.mean and data.std)"
            )
        if on_bad_image not in BAD_IMAGE_MODES:
            raise UserError(
                f"data.on_bad_image={on_bad_image!r} is not supported; use skip or error"
            )
        self.normalize_mode = normalize
        self.on_bad_image = on_bad_image
        self.decode_workers = decode_workers or min(8, os.cpu_count() or 1)
        super().__init__(image_size=image_size, **kwargs)
        self._index: FolderIndex | None = None
        self._decoded: dict[str, Split] | None = None
        # normalize=auto: statistics known once computed, read from the cache or a checkpoint
        explicit = self.hparams.mean is not None
        self._stats_pending = normalize == "auto" and not explicit

    # ------------------------------------------------------------------ arguments
    @staticmethod
    def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
        try:
            fractions = tuple(float(f) for f in split)
        except (TypeError, ValueError):
            fractions = ()
        if (
            len(fractions) != 3
            or any(f < 0 for f in fractions)
            or fractions[0] <= 0
            or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
        ):
            raise UserError(
                f"data.split={list(split) if split is not None else split} must be three fractions "
                "[train, val, test] that sum to 1 with train > 0, e.g. data.split=[0.8,0.1,0.1]"
            )
        return fractions  # type: ignore[return-value]

    # ------------------------------------------------------------------ shape metadata
    @property
    def native_channels(self) -> int:  # type: ignore[override]
        return 1 if self.grayscale else 3

    @property
    def in_channels(self) -> int:
        return self.native_channels

    @property
    def all_class_names(self) -> list[str]:  # type: ignore[override]
        return self.index.class_names

    @property
    def default_mean(self) -> tuple[float, ...]:  # type: ignore[override]
        if self.normalize_mode == "none":
            return (0.0,) * self.native_channels
        return IMAGENET_GRAY_MEAN if self.grayscale else IMAGENET_MEAN

    @property
    def default_std(self) -> tuple[float, ...]:  # type: ignore[override]
        if self.normalize_mode == "none":
            return (1.0,) * self.native_channels
        return IMAGENET_GRAY_STD if self.grayscale else IMAGENET_STD

    # ------------------------------------------------------------------ scanning
    @property
    def index(self) -> FolderIndex:
        """The files of every split (scanned once, on first use: no image is decoded)."""
        if self._index is None:
            self._index = self._scan()
        return self._index

    def _scan(self) -> FolderIndex:
        root = self.root
        if not root.is_dir():
            raise UserError(
                f"data.root={root} does not exist or is not a folder; point data.root at a folder "
                "of class folders (<class>/*.jpg) or of train/ val/ test/ folders"
            )
        subdirs = _class_dirs(root)
        split_names = {name for names in SPLIT_DIRS.values() for name in names}
        given: dict[str, Path] = {}
        if (root / "train").is_dir() and all(d.name in split_names for d in subdirs):
            for split, names in SPLIT_DIRS.items():
                found = [root / n for n in names if (root / n).is_dir()]
                if len(found) > 1:
                    raise UserError(
                        f"data.root={root} has several validation folders "
                        f"({', '.join(p.name for p in found)}); keep one"
                    )
                if found:
                    given[split] = found[0]
            layout, class_root = "splits", given["train"]
        else:
            layout, class_root = "classes", root

        class_dirs = _class_dirs(class_root)
        if not class_dirs:
            raise UserError(
                f"data.root={root}: no class folders in {class_root}; put each class's images "
                "in its own folder (<class>/*.jpg)"
            )
        if len(class_dirs) < 2:
            raise UserError(
                f"data.root={root}: only one class folder ({class_dirs[0]}); classification needs "
                "at least two classes"
            )
        class_names = [d.name for d in class_dirs]
        index = FolderIndex(layout, class_names)
        for split in ("train", "val", "test"):
            if layout == "classes" and split != "train":
                continue
            folder = class_root if split == "train" else given.get(split)
            if folder is None:
                continue
            items: list[Item] = []
            for class_dir in _class_dirs(folder):
                if class_dir.name not in class_names:
                    raise UserError(
                        f"{class_dir} is not a class of {class_root} (classes: {class_names}); "
                        "every split must use the training split's class folders"
                    )
                files, ignored = _image_files(class_dir)
                index.ignored += ignored
                if not files:
                    raise UserError(
                        f"class folder {class_dir} holds no image files "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
                    )
                label = class_names.index(class_dir.name)
                items += [(path, label) for path in files]
            index.files[split] = items
        self._carve_missing_splits(index)
        if index.ignored:
            log.info(f"data.root={root}: ignored {index.ignored} files without an image suffix")
        return index

    def _carve_missing_splits(self, index: FolderIndex) -> None:
        """Draw the missing test and validation splits from train, stratified by class."""
        train_frac, val_frac, test_frac = self.split_fractions
        pool = index.files["train"]
        if "test" not in index.files:
            if test_frac <= 0:
                raise UserError(
                    f"data.root={self.root} has no test/ folder and data.split gives test 0; "
                    "set a test fraction, e.g. data.split=[0.8,0.1,0.1]"
                )
            pool, index.files["test"] = _take_stratified(pool, test_frac, TEST_SPLIT_SEED)
        if "val" not in index.files:
            if self.hparams.num_folds is not None:
                index.files["val"] = []  # k-fold: the folds carve validation from the pool
            elif val_frac <= 0:
                raise UserError(
                    f"data.root={self.root} has no val/ folder and data.split gives val 0; "
                    "set a val fraction, e.g. data.split=[0.8,0.1,0.1], or use data.num_folds"
                )
            else:  # the pool is now the train + val share of the images
                fraction = val_frac / (train_frac + val_frac)
                pool, index.files["val"] = _take_stratified(pool, fraction, self.hparams.seed)
        index.files["train"] = pool
        for split in ("train", "test") + (() if self.hparams.num_folds is not None else ("val",)):
            if not index.files[split]:
                raise UserError(
                    f"data.root={self.root}: too few images to carve a {split} split with "
                    f"data.split={list(self.split_fractions)}; add images or raise the fraction"
                )

    # ------------------------------------------------------------------ reading
    def _read_one(self, path: Path) -> torch.Tensor | Path | str:
        """The decoded image (in memory) or the checked path (streaming); else why it failed."""
        try:
            if self.hparams.in_memory:
                return decode_image(path, self.in_channels, self.image_size)
            check_image_file(path)
            return path
        except UserError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{path}: unreadable image ({type(err).__name__}: {err})"

    def _read_all(self) -> dict[str, Split]:
        """Every split as (images, labels): decoded tensors, or ``FileImages`` when streaming.

        Unreadable images are reported all together, then skipped or fatal. Streaming checks only
        each file's header here; a file that breaks later stops training with its path.
        """
        index = self.index
        streaming = not self.hparams.in_memory
        items = [
            (split, path, label) for split, files in index.files.items() for path, label in files
        ]
        verb = "checking" if streaming else "decoding"
        log.info(f"{verb} {len(items)} images from data.root={self.root} ...")
        with ThreadPoolExecutor(max_workers=self.decode_workers) as pool:
            results = list(pool.map(self._read_one, [path for _, path, _ in items]))
        bad = [r for r in results if isinstance(r, str)]
        if bad:
            if self.on_bad_image == "error":
                raise UserError(
                    f"{len(bad)} unreadable images in data.root={self.root}: {_listing(bad)}; "
                    "fix or delete them, or set data.on_bad_image=skip"
                )
            log.warning(
                f"skipping {len(bad)} of {len(items)} images that cannot be read "
                "(data.on_bad_image=skip):\n  " + "\n  ".join(bad)
            )
        splits: dict[str, Split] = {}
        channels, size = self.in_channels, self.image_size
        for split in index.files:
            kept = [
                (result, label)
                for (s, _, label), result in zip(items, results, strict=True)
                if s == split and not isinstance(result, str)
            ]
            if not kept and (split != "val" or self.hparams.num_folds is None):
                raise UserError(
                    f"data.root={self.root}: no readable images left in the {split} split"
                )
            labels = torch.tensor([label for _, label in kept], dtype=torch.long)
            if streaming:
                paths = [path for path, _ in kept]
                splits[split] = (FileImages(paths, channels, size, self.decode_workers), labels)
            elif kept:
                splits[split] = (torch.stack([image for image, _ in kept]), labels)
            else:
                splits[split] = (torch.empty((0, channels, size, size), dtype=torch.uint8), labels)
        missing = set(range(len(index.class_names))) - set(splits["train"][1].tolist())
        if missing:
            names = [index.class_names[i] for i in sorted(missing)]
            raise UserError(
                f"data.root={self.root}: no readable training images for classes {names}; "
                "add images to those class folders"
            )
        if not streaming:
            total = sum(images.numel() for images, _ in splits.values())
            log.info(
                f"decoded {len(items) - len(bad)} images at {channels}x{size}x{size} "
                f"({total / 1e6:.0f} MB in memory)"
            )
        return splits

    def _split(self, split: str) -> Split:
        if self._decoded is None:
            self._decoded = self._read_all()
        return self._decoded[split]

    def load_split(self, split: str) -> Split:
        return self._split(split)

    def load_val_split(self) -> Split | None:
        val = self._split("val")
        if self.hparams.num_folds is not None and len(val[1]) == 0:
            return None
        return val

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        self._decoded = None  # the splits now hold the images
        if self._stats_pending:
            stats = self._read_cached_stats()
            if stats is None:
                stats = self._compute_stats(self.splits["train"][0])
                self._write_cached_stats(stats)
            self._apply_stats(stats)

    # ------------------------------------------------------------------ normalize=auto
    def _stats_key(self) -> str:
        """Identifies the training split: the files (paths, sizes) and every split setting."""
        hp = self.hparams
        files = [
            [split, str(path.relative_to(self.root)), path.stat().st_size, label]
            for split, items in sorted(self.index.files.items())
            for path, label in items
        ]
        payload = {
            "files": files,
            "image_size": self.image_size,
            "grayscale": self.grayscale,
            "split": list(self.split_fractions),
            "seed": hp.seed,
            "classes": list(hp.classes) if hp.classes is not None else None,
            "num_folds": hp.num_folds,
            "fold": hp.fold,
            "on_bad_image": self.on_bad_image,
        }
        encoded = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha1(encoded).hexdigest()[:16]

    @property
    def stats_cache_path(self) -> Path:
        return self.root / STATS_CACHE

    def _read_cached_stats(self) -> dict[str, list[float]] | None:
        try:
            cache = json.loads(self.stats_cache_path.read_text())
            entry = cache[self._stats_key()]
            return {
                "mean": [float(v) for v in entry["mean"]],
                "std": [float(v) for v in entry["std"]],
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cached_stats(self, stats: dict[str, list[float]]) -> None:
        path = self.stats_cache_path
        try:
            try:
                cache = json.loads(path.read_text())
                if not isinstance(cache, dict):
                    cache = {}
            except (OSError, ValueError):
                cache = {}
            cache[self._stats_key()] = stats
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        except OSError as err:  # read-only data: recompute next time
            log.info(f"normalisation statistics not cached ({path}: {err.strerror or err})")

    @staticmethod
    def _compute_stats(images: torch.Tensor) -> dict[str, list[float]]:
        """Per-channel mean and std (in [0, 1] units) of a uint8 batch, in float64 chunks."""
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

    def _apply_stats(self, stats: dict[str, list[float]]) -> None:
        self.pipeline.set_normalization(stats["mean"], stats["std"])
        self._stats_pending = False
        log.info(
            f"normalising with mean={stats['mean']} std={stats['std']} "
            f"(data.normalize={self.normalize_mode})"
        )

    def _ensure_stats(self) -> None:
        if not self._stats_pending:
            return
        try:
            cached = self._read_cached_stats() if self.root.is_dir() else None
        except UserError:
            cached = None
        if cached is not None:
            self._apply_stats(cached)
            return
        if not self.root.is_dir():
            raise UserError(
                f"data.normalize=auto needs the training images in data.root={self.root} (or their "
                f"statistics in {self.stats_cache_path}) to normalise like training did; "
                "restore them, or pass data.mean=[...] data.std=[...]"
            )
        self.setup("fit")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        self._ensure_stats()
        return super().preprocess(images)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Saved into checkpoints by Lightning: the normalisation statistics actually used."""
        normalize = self.pipeline.normalize
        if self._stats_pending:
            return {}
        return {
            "mean": normalize.mean.flatten().tolist(),
            "std": normalize.std.flatten().tolist(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "mean" in state_dict and "std" in state_dict:
            self._apply_stats({"mean": list(state_dict["mean"]), "std": list(state_dict["std"])})

    # ------------------------------------------------------------------ extras
    def summary(self) -> dict[str, Any]:
        """Layout, classes and file counts per split (scanning only)."""
        index = self.index
        return {
            "root": str(self.root),
            "layout": index.layout,
            "classes": list(index.class_names),
            "files": {split: len(items) for split, items in index.files.items()},
            "ignored_files": index.ignored,
        }
