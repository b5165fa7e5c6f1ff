"""The base LightningDataModule: seeded splits, class subsets, folds, loaders, shapes."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import Container, OmegaConf

from imgcls.data.loaders import build_loader
from imgcls.data.transforms import RESIZE_MODES, BatchPipeline, resize_uint8
from imgcls.utils.errors import UserError

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, C, H, W], int64 labels [N]


def stratified_split(labels: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(rest, taken) indices, ``count`` taken class-proportionally; each class keeps one in rest."""
    generator, keys = torch.Generator().manual_seed(seed), torch.full((len(labels),), math.inf)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)][1:]
        offset = torch.rand(1, generator=generator)
        keys[members] = (torch.arange(len(members)) + offset) / (len(members) + 1)
    taken = keys.argsort(stable=True)[:count]
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[taken[keys[taken] < math.inf]] = False
    return rest.nonzero().flatten(), (~rest).nonzero().flatten()


def device_free_memory(device: torch.device) -> int | None:
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


class ImageDataModule(pl.LightningDataModule):
    """Shared behaviour of every imgcls datamodule; subclasses implement ``load_split``."""

    all_class_names: Sequence[str] = ()  # every class of the dataset, in label order
    in_channels, native_size = 1, 28  # channels and (square) side as stored
    default_mean: Sequence[float] = (0.5,)  # the dataset's normalisation statistics
    default_std: Sequence[float] = (0.5,)
    stratified = False  # validation carved class by class (else a seeded random draw)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        val_size: float = 0.1,
        seed: int = 42,
        image_size: int | None = None,
        resize: str = "squash",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: str | Sequence[str] | None = None,
        in_memory: bool = True,
        on_device: bool | None = None,
        classes: Sequence[int | str] | None = None,
        num_folds: int | None = None,
        fold: int = 0,
        random_erasing: float = 0.0,
        drop_last: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        # plain lists, not ListConfig: checkpoints carrying them load with weights_only=True
        for key, value in list(self.hparams.items()):
            if isinstance(value, Container):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.data_dir, hp = str(data_dir), self.hparams
        if min(batch_size, eval_batch_size or 1) < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_folds is not None and num_folds < 2:
            raise UserError(f"data.num_folds must be >= 2, got {num_folds}")
        if num_folds is not None and not 0 <= fold < num_folds:
            raise UserError(
                f"data.fold={fold} is out of range for data.num_folds={num_folds}; "
                f"use 0..{num_folds - 1}"
            )
        if num_folds is None and not (0 < val_size < 1 or val_size == int(val_size) >= 1):
            raise UserError(
                f"data.val_size must be a fraction in (0, 1) or a count, not {val_size}"
            )
        if resize not in RESIZE_MODES:
            raise UserError(f"data.resize={resize!r} is not supported; use squash or crop")
        if image_size is not None and image_size < 8:
            raise UserError(f"data.image_size must be >= 8, got {image_size}")
        mean, std = hp.mean or self.default_mean, hp.std or self.default_std
        self.pipeline = BatchPipeline(mean, std, hp.augment, random_erasing=random_erasing)
        self.splits: dict[str, Split] = {}
        self._device_splits: dict[str, Split] = {}  # data.on_device copies, by split
        self._device_decisions: dict[torch.device, bool] = {}
        self._train_loader: Any = None
        self._loader_state: dict[str, int] | None = None  # restored from a checkpoint

    def fetch(self, folder: Path, files: Sequence[str], calls: list[dict], listed=None) -> None:
        """Unless ``files`` are in ``folder``, ``self.dataset(**call, download=True)`` per call."""
        if all((folder / name).is_file() for name in files):
            return
        try:
            if not self.hparams.download:
                raise OSError("data.download=false")
            for call in calls:
                self.dataset(**call, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; bad md5 a RuntimeError
            raise UserError(
                f"{self.dataset.__name__} is not in data.data_dir={self.data_dir} and could not be "
                f"downloaded ({str(err).splitlines()[0] if str(err) else err!r}); copy "
                f"{', '.join(listed or files)} into {folder}/ or train offline with data=digits"
            ) from err

    def load_val_split(self) -> Split | None:
        """The dataset's own validation split (``None``: carved from train)."""
        return None

    @property
    def class_names(self) -> list[str]:
        return [self.all_class_names[i] for i in self._class_indices()]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.hparams.image_size or self.native_size)

    def _class_indices(self) -> list[int]:
        classes, names = self.hparams.classes, list(self.all_class_names)
        if classes is None:
            return list(range(len(names)))
        indices = []
        for c in classes:
            if not (c in names if isinstance(c, str) else 0 <= c < len(names)):
                raise UserError(
                    f"data.classes entry {c!r} is not a class of this dataset; "
                    f"use indices 0..{len(names) - 1} or names {names}"
                )
            indices.append(names.index(c) if isinstance(c, str) else c)
        if len(set(indices)) < 2:
            raise UserError(f"data.classes must name at least two distinct classes, got {classes}")
        return indices

    def _keep_classes(self, split: Split) -> Split:
        images, labels = split
        if self.hparams.classes is None:
            return images, labels
        remap = torch.full((len(self.all_class_names),), -1, dtype=torch.long)
        remap[self._class_indices()] = torch.arange(self.num_classes)
        keep = remap[labels] >= 0
        return images[keep], remap[labels][keep]

    def train_val_indices(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded train/validation indices (a stratified fold when ``num_folds`` is set)."""
        hp, n = self.hparams, len(labels)
        if hp.num_folds is not None:
            from sklearn.model_selection import StratifiedKFold

            folds = StratifiedKFold(n_splits=hp.num_folds, shuffle=True, random_state=hp.seed)
            train_idx, val_idx = list(folds.split(labels.numpy(), labels.numpy()))[hp.fold]
            return torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        n_val = int(round(hp.val_size * n)) if hp.val_size < 1 else int(hp.val_size)
        if not 0 < n_val < n:
            raise UserError(
                f"data.val_size={hp.val_size} leaves no training or no validation data "
                f"out of {n} samples"
            )
        if self.stratified:
            return stratified_split(labels, n_val, hp.seed)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed))
        return order[n_val:], order[:n_val]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = self._keep_classes(self.load_split("train"))
        val = self.load_val_split()
        if val is None:
            train_idx, val_idx = self.train_val_indices(labels)
            val = images[val_idx], labels[val_idx]
            images, labels = images[train_idx], labels[train_idx]
        else:
            val = self._keep_classes(val)
        splits = {"train": (images, labels), "val": val}
        splits["test"] = self._keep_classes(self.load_split("test"))
        self.splits = {name: (self.resize(x), y) for name, (x, y) in splits.items()}

    def class_counts(self) -> torch.Tensor:
        """Images per class in the training split (int64 ``[num_classes]``)."""
        self.setup("fit")
        return torch.bincount(self.splits["train"][1], minlength=self.num_classes)

    def _use_device_copies(self, device: torch.device) -> bool:
        """Whether the in-memory splits are copied to ``device`` (``data.on_device``)."""
        on_device = self.hparams.on_device
        if device.type == "cpu" or on_device is False:
            return False
        if device not in self._device_decisions:  # decided once, before any split was copied
            needed = sum(t.nbytes for split in self.splits.values() for t in split)
            free = device_free_memory(device)
            if on_device and free is not None and needed > free:
                raise UserError(
                    f"data.on_device=true needs {needed / 2**30:.2f} GiB on {device} but only "
                    f"{free / 2**30:.2f} GiB are free; set data.on_device=false"
                )
            fits = free is not None and needed <= free // 4
            self._device_decisions[device] = bool(on_device) or fits
        return self._device_decisions[device]

    def _training_device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, train: bool) -> Any:
        images, labels = self.splits[split]
        device = self._training_device()
        if self.hparams.in_memory and self._use_device_copies(device):
            if split not in self._device_splits or self._device_splits[split][0].device != device:
                self._device_splits[split] = (images.to(device), labels.to(device))
            images, labels = self._device_splits[split]
        return build_loader(images, labels, self.pipeline, self.hparams, self.trainer, train)

    def teardown(self, stage: str | None = None) -> None:
        self._device_splits.clear()  # frees the data.on_device copies
        self._device_decisions.clear()

    def train_dataloader(self) -> Any:
        self._train_loader = self._loader("train", train=True)
        if self._loader_state is not None and hasattr(self._train_loader, "load_state_dict"):
            self._train_loader.load_state_dict(self._loader_state)
        return self._train_loader

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)

    def state_dict(self) -> dict[str, Any]:
        # the loader's position: Lightning drops stateful loaders' state on resume when
        # configure_optimizers reads estimated_stepping_batches (Lightning issue 20550)
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if hasattr(loader, "state_dict") else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("train_loader")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Fast path: uint8 batches are augmented and normalised here, on the training device."""
        images, labels = batch
        if images.dtype == torch.uint8:
            self.pipeline.to(images.device)
            training = self.trainer is not None and self.trainer.training
            images = self.pipeline(images, train=training)
        return images, labels

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images of any size -> normalised model input (no augmentation)."""
        return self.pipeline(self.resize(images), train=False)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size at ``image_size`` the ``data.resize`` way (squash or crop)."""
        return resize_uint8(images, self.image_size, self.hparams.resize)
