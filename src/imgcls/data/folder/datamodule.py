"""``FolderDataModule``: a folder of class folders (its files and images: ``read``)."""

import logging
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from imgcls.data.base import ImageDataModule, Split
from imgcls.data.folder import read
from imgcls.utils.errors import UserError

log = logging.getLogger(__name__)

#: ImageNet's statistics by channels (grayscale: the channels' mean)
IMAGENET = {3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 1: ((0.449,), (0.226,))}


class FolderDataModule(ImageDataModule):
    """Image classification on a folder of class folders (``data=folder data.root=PATH``)."""

    native_size, stratified = 64, True

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
        fractions = tuple(float(f) for f in split if isinstance(f, (int, float)))
        valid = len(fractions) == 3 and min(fractions) >= 0 < fractions[0]
        if not valid or abs(sum(fractions) - 1) > 1e-6:
            raise UserError(
                f"data.split={split} must be three fractions [train, val, test] that sum to 1 "
                "with train > 0, e.g. data.split=[0.8,0.1,0.1]"
            )
        for key, value, allowed in [
            ("normalize", normalize, ["imagenet", "auto", "none"]),
            ("on_bad_image", on_bad_image, ["skip", "error"]),
        ]:
            if value not in allowed:
                raise UserError(f"data.{key}={value!r} is not supported; use one of {allowed}")
        self.root = Path(str(root)).expanduser()
        self.in_channels = channels = 1 if grayscale else 3
        self.default_mean, self.default_std = IMAGENET[channels]
        if normalize == "none":
            self.default_mean, self.default_std = (0.0,) * channels, (1.0,) * channels
        # the validation share of what is left once the test split is set aside (base carves it)
        val_size = fractions[1] / (fractions[0] + fractions[1])
        super().__init__(image_size=image_size, val_size=val_size or 0.5, **kwargs)
        self._decoded: dict[str, Split] | None = None
        # normalize=auto: statistics known once computed at setup or read from a checkpoint
        self._stats_pending = normalize == "auto" and self.hparams.mean is None

    @property
    def all_class_names(self) -> list[str]:  # type: ignore[override]
        return self.layout[0]

    @cached_property
    def layout(self) -> tuple[list[str], dict[str, Path]]:
        return read.find_layout(self.root)

    @cached_property
    def files(self) -> dict[str, read.Items]:
        (classes, dirs), hp = self.layout, self.hparams
        files = read.scan_files(classes, dirs)
        read.carve_test(files, self.root, dirs["train"] != self.root, hp.split[2])
        if hp.num_folds is not None:  # the folds split train/ and val/ together
            files["train"] += files.pop("val", [])
        return files

    def load_split(self, split: str) -> Split:
        if self._decoded is None:
            hp, root = self.hparams, self.root
            args = (self.in_channels, self.image_size, hp.resize)
            workers = hp.decode_workers or min(8, os.cpu_count() or 1)
            self._decoded = read.read_splits(
                self.files, root, args, hp.in_memory, hp.on_bad_image, workers
            )
            trained = set(self._decoded["train"][1].tolist())
            if missing := [c for i, c in enumerate(self.all_class_names) if i not in trained]:
                raise UserError(
                    f"data.root={root}: no readable training images for classes {missing}; "
                    "add images to those class folders"
                )
        return self._decoded[split]

    def load_val_split(self) -> Split | None:
        if "val" in self.files:
            return self.load_split("val")
        if self.hparams.num_folds is None and self.hparams.split[1] <= 0:
            raise UserError(
                f"data.root={self.root} has no val/ folder and data.split gives val 0; "
                "set a val fraction, e.g. data.split=[0.8,0.1,0.1], or use data.num_folds"
            )
        if self.hparams.num_folds is None and self.layout[1]["train"] != self.root:
            log.info(
                f"data.root={self.root} has no val/ folder: the validation split is carved from "
                f"train/ (stratified, data.seed={self.hparams.seed})"
            )
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        self._decoded = None  # the splits now hold the images
        if self._stats_pending:  # computed from the training split every run, no file written
            self._apply_stats(read.compute_stats(self.splits["train"][0]))

    def _apply_stats(self, stats: read.Stats) -> None:
        self.pipeline.set_normalization(stats["mean"], stats["std"])
        self._stats_pending = False
        log.info(
            f"normalising with mean={stats['mean']} std={stats['std']} "
            f"(data.normalize={self.hparams.normalize})"
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self._stats_pending:  # normalize=auto before setup, no checkpoint state: the images
            if not self.root.is_dir():
                raise UserError(
                    f"data.normalize=auto needs the training images in data.root={self.root} (or "
                    "a checkpoint holding their statistics) to normalise like training did; "
                    "restore them, or pass data.mean=[...] data.std=[...]"
                )
            self.setup("fit")
        return super().preprocess(images)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if not self._stats_pending:  # in checkpoints: eval and predict normalise like training
            for name in ("mean", "std"):
                state[name] = getattr(self.pipeline.normalize, name).flatten().tolist()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "mean" in state_dict:
            self._apply_stats(state_dict)
