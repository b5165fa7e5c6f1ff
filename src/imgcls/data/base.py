"""The base LightningDataModule: splits, class subsets, k-fold, loaders and shape metadata.

A dataset subclass only says what its classes are and how to load its raw train/test splits as
uint8 tensors; everything else (validation carving, folds, resizing, fast or standard loaders,
augmentation) lives here once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import Container, OmegaConf
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from imgcls.data.loaders import TensorBatchLoader, TensorImageDataset
from imgcls.data.transforms import RESIZE_MODES, BatchPipeline, resize_uint8
from imgcls.utils.errors import UserError

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, C, H, W], int64 labels [N]


def _concat(first: Any, second: Any) -> Any:
    """Two image collections as one: tensors, or lazy ones (``FileImages``) that ``concat``."""
    return first.concat(second) if hasattr(first, "concat") else torch.cat([first, second])


def missing_data(name: str, data_dir: str, folder: object, files: list[str], reason: object):
    """The one-line error for a dataset that is neither on disk nor downloadable."""
    return UserError(
        f"{name} is not in data.data_dir={data_dir} and could not be downloaded ({reason}); "
        f"copy {', '.join(files)} into {folder}/ or train offline with data=digits"
    )


def device_free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA ``device`` (``None`` where torch cannot tell)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


class ImageDataModule(pl.LightningDataModule):
    """Shared behaviour of every imgcls datamodule; subclasses implement ``load_split``."""

    #: names of all classes of the dataset, in label order
    all_class_names: Sequence[str] = ()
    #: channels and (square) side of the images as stored
    native_channels: int = 1
    native_size: int = 28
    #: normalisation statistics of the dataset
    default_mean: Sequence[float] = (0.5,)
    default_std: Sequence[float] = (0.5,)

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
        # Hydra passes lists as ListConfig: store plain lists, or checkpoints (which carry these
        # hyperparameters) no longer load with torch.load(weights_only=True)
        for key, value in list(self.hparams.items()):
            if isinstance(value, Container):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.data_dir = str(data_dir)
        self._check_args()
        self.pipeline = BatchPipeline(
            mean if mean is not None else self.default_mean,
            std if std is not None else self.default_std,
            augment,
            random_erasing=random_erasing,
        )
        self.splits: dict[str, Split] = {}
        self._device_splits: dict[str, Split] = {}  # data.on_device copies, by split
        self._device_decisions: dict[torch.device, bool] = {}
        self._train_loader: Any = None
        self._loader_state: dict[str, int] | None = None  # restored from a checkpoint

    # ------------------------------------------------------------------ contract for subclasses
    def load_split(self, split: str) -> Split:
        """Raw ``"train"`` or ``"test"`` split as (uint8 ``[N, C, H, W]``, int64 ``[N]``)."""
        raise NotImplementedError

    def load_val_split(self) -> Split | None:
        """A validation split the dataset itself defines; ``None`` (default) carves one from train.

        With ``num_folds`` set, a defined validation split joins the training pool that is folded.
        """
        return None

    # ------------------------------------------------------------------ shape metadata
    @property
    def class_names(self) -> list[str]:
        return [self.all_class_names[i] for i in self._class_indices()]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.native_channels

    @property
    def image_size(self) -> int:
        return int(self.hparams.image_size or self.native_size)

    # ------------------------------------------------------------------ validation
    def _check_args(self) -> None:
        hp = self.hparams
        if hp.batch_size < 1 or (hp.eval_batch_size is not None and hp.eval_batch_size < 1):
            raise UserError(f"data.batch_size must be >= 1, got {hp.batch_size}")
        if hp.num_folds is not None:
            if hp.num_folds < 2:
                raise UserError(f"data.num_folds must be >= 2, got {hp.num_folds}")
            if not 0 <= hp.fold < hp.num_folds:
                raise UserError(
                    f"data.fold={hp.fold} is out of range for data.num_folds={hp.num_folds}; "
                    f"use 0..{hp.num_folds - 1}"
                )
        elif not (0 < hp.val_size < 1 or (hp.val_size >= 1 and float(hp.val_size).is_integer())):
            raise UserError(
                f"data.val_size must be a fraction in (0, 1) or a whole count, got {hp.val_size}"
            )
        if hp.resize not in RESIZE_MODES:
            raise UserError(f"data.resize={hp.resize!r} is not supported; use squash or crop")
        if hp.image_size is not None and hp.image_size < 8:
            raise UserError(f"data.image_size must be >= 8, got {hp.image_size}")

    def _class_indices(self) -> list[int]:
        classes = self.hparams.classes
        if classes is None:
            return list(range(len(self.all_class_names)))
        indices = []
        for c in classes:
            if isinstance(c, str) and c in self.all_class_names:
                indices.append(self.all_class_names.index(c))
            elif isinstance(c, int) and 0 <= c < len(self.all_class_names):
                indices.append(c)
            else:
                names = list(self.all_class_names)
                raise UserError(
                    f"data.classes entry {c!r} is not a class of this dataset; "
                    f"use indices 0..{len(names) - 1} or names {names}"
                )
        if len(set(indices)) < 2:
            raise UserError(f"data.classes must name at least two distinct classes, got {classes}")
        return indices

    # ------------------------------------------------------------------ splitting
    def _keep_classes(self, split: Split) -> Split:
        images, labels = split
        indices = self._class_indices()
        if indices == list(range(len(self.all_class_names))):
            return images, labels
        remap = torch.full((len(self.all_class_names),), -1, dtype=torch.long)
        remap[torch.tensor(indices)] = torch.arange(len(indices))
        new_labels = remap[labels]
        keep = new_labels >= 0
        return images[keep], new_labels[keep]

    def train_val_indices(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded train/validation index split (a stratified fold when ``num_folds`` is set)."""
        hp, n = self.hparams, len(labels)
        if hp.num_folds is not None:
            from sklearn.model_selection import StratifiedKFold

            folds = StratifiedKFold(n_splits=hp.num_folds, shuffle=True, random_state=hp.seed)
            train_idx, val_idx = list(folds.split(torch.zeros(n), labels.numpy()))[hp.fold]
            return torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        n_val = int(round(hp.val_size * n)) if hp.val_size < 1 else int(hp.val_size)
        if not 0 < n_val < n:
            raise UserError(
                f"data.val_size={hp.val_size} leaves no training or no validation data "
                f"out of {n} samples"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed))
        return order[n_val:], order[:n_val]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = self._keep_classes(self.load_split("train"))
        given_val = self.load_val_split()
        if given_val is not None and self.hparams.num_folds is None:
            val_images, val_labels = self._keep_classes(given_val)
            train = (self.resize(images), labels)
            val = (self.resize(val_images), val_labels)
        else:
            if given_val is not None:  # k-fold over the whole pool: train + given validation
                val_images, val_labels = self._keep_classes(given_val)
                images = _concat(self.resize(images), self.resize(val_images))
                labels = torch.cat([labels, val_labels])
            train_idx, val_idx = self.train_val_indices(labels)
            train = (self.resize(images[train_idx]), labels[train_idx])
            val = (self.resize(images[val_idx]), labels[val_idx])
        test_images, test_labels = self._keep_classes(self.load_split("test"))
        self.splits = {
            "train": train,
            "val": val,
            "test": (self.resize(test_images), test_labels),
        }

    def class_counts(self) -> torch.Tensor:
        """Images per class in the training split (int64 ``[num_classes]``; sets up if needed).

        For imbalanced data, e.g. cross-entropy weights ``counts.sum() / (num_classes * counts)``.
        """
        if not self.splits:
            self.setup("fit")
        return torch.bincount(self.splits["train"][1], minlength=self.num_classes)

    # ------------------------------------------------------------------ loaders
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader_settings(self) -> tuple[int, bool]:
        """(workers, pinned memory): ``None`` means one worker per core (at most 8) and pinning
        when training on a GPU; the in-memory path never uses workers."""
        hp = self.hparams
        workers = min(8, os.cpu_count() or 1) if hp.num_workers is None else hp.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        return (0 if hp.in_memory else workers), pin

    def _training_device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _use_device_copies(self, device: torch.device) -> bool:
        """Whether the in-memory splits go to ``device`` once (``data.on_device``).

        ``None`` decides by size: on a GPU, when all splits take at most a quarter of its free
        memory. ``True`` on a GPU without room for them is a one-line error, before training.
        """
        on_device = self.hparams.on_device
        if device.type == "cpu" or on_device is False:
            return False
        if device in self._device_decisions:  # decided once, before any split was copied
            return self._device_decisions[device]
        needed = sum(t.nbytes for split in self.splits.values() for t in split)
        free = device_free_memory(device)
        if on_device is None:
            use = free is not None and needed <= free // 4
        elif free is not None and needed > free:
            raise UserError(
                f"data.on_device=true needs {needed / 2**30:.2f} GiB on {device} but only "
                f"{free / 2**30:.2f} GiB are free; set data.on_device=false"
            )
        else:
            use = True
        self._device_decisions[device] = use
        return use

    def _split_tensors(self, split: str) -> Split:
        """The split's (images, labels): the ``data.on_device`` copy when there is one."""
        device = self._training_device()
        if not self.hparams.in_memory or not self._use_device_copies(device):
            return self.splits[split]
        cached = self._device_splits.get(split)
        if cached is None or cached[0].device != device:
            images, labels = self.splits[split]
            cached = (images.to(device), labels.to(device))
            self._device_splits[split] = cached
        return cached

    def _overfitting(self) -> bool:
        """``trainer.overfit_batches`` (``debug=overfit``): the same training batches each epoch."""
        return self.trainer is not None and bool(self.trainer.overfit_batches)

    def _drop_last(self) -> bool:
        """Whether training drops its last partial batch (``data.drop_last``); ``None``: when the
        model replays CUDA graphs (``model.compile=reduce-overhead``), which want one shape."""
        if self.hparams.drop_last is not None:
            return self.hparams.drop_last
        module = getattr(self.trainer, "lightning_module", None)
        return bool(getattr(module, "uses_cuda_graphs", False))

    def _loader(self, split: str, train: bool) -> Any:
        images, labels = self._split_tensors(split)
        hp = self.hparams
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        drop_last = train and self._drop_last()
        workers, pin_memory = self._loader_settings()
        rank, world_size = self._rank_and_world()
        if hp.in_memory:
            pin_memory = pin_memory and images.device.type == "cpu"
            return TensorBatchLoader(
                images,
                labels,
                batch_size,
                shuffle=train,
                drop_last=drop_last,
                seed=hp.seed,
                # overfitting: one seeded order for every epoch, so the first batches stay the same
                epoch_fn=(lambda: 0) if self._overfitting() else self._current_epoch,
                rank=rank,
                world_size=world_size,
                pin_memory=pin_memory,
            )
        dataset = TensorImageDataset(images, labels, self.pipeline, train=train)
        sampler = None
        if not train and world_size > 1:
            # Lightning's default DistributedSampler pads the last shard with repeated samples,
            # which the synced metrics would count twice: every sample once, like the in-memory
            # path (a DistributedSampler subclass, so Lightning keeps it)
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and not self._overfitting(),
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )

    def teardown(self, stage: str | None = None) -> None:
        self._device_splits.clear()  # frees the data.on_device copies
        self._device_decisions.clear()

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> Any:
        self._train_loader = self._loader("train", train=True)
        if self._loader_state is not None and hasattr(self._train_loader, "load_state_dict"):
            self._train_loader.load_state_dict(self._loader_state)
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """The in-memory training loader's position, saved in checkpoints by Lightning.

        Lightning also saves stateful loaders itself, but does not restore them when
        ``configure_optimizers`` reads ``estimated_stepping_batches`` (Lightning issue 20550), as
        the OneCycle schedule does: the datamodule's state is restored before the loader exists.
        """
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if hasattr(loader, "state_dict") else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("train_loader")

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Fast path: uint8 batches are augmented and normalised here, on the training device."""
        images, labels = batch
        if images.dtype == torch.uint8:
            self.pipeline.to(images.device)
            training = self.trainer is not None and self.trainer.training
            images = self.pipeline(images, train=training)
        return images, labels

    # ------------------------------------------------------------------ single images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images of any size -> normalised model input (no augmentation)."""
        return self.pipeline(self.resize(images), train=False)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size at ``image_size`` the ``data.resize`` way (squash or crop)."""
        if not isinstance(images, torch.Tensor):  # streamed FileImages: resized when decoded
            return images
        return resize_uint8(images, self.image_size, self.hparams.resize)
