"""Two ways to serve batches from a uint8 image tensor: slicing (fast) or a classic Dataset."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from imgcls.data.transforms import BatchPipeline


@dataclass(eq=False)
class TensorBatchLoader:
    """Batches sliced from a uint8 tensor in a (seed, epoch) order; resumable mid-epoch."""

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    shuffle: bool
    drop_last: bool = False
    seed: int = 0
    epoch_fn: Callable[[], int] = lambda: 0
    shard: tuple[int, int] = (0, 1)  # (rank, world size)
    pin_memory: bool = False
    position: dict[str, int] = field(default_factory=lambda: {"epoch": -1, "batches": 0})
    resume_at: dict[str, int] = field(default_factory=dict)  # a loaded state, for one epoch

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at = dict(state)

    def __len__(self) -> int:
        (rank, world_size), n = self.shard, len(self.labels)
        size = n // world_size if self.shuffle else len(range(rank, n, world_size))
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a generator: the epoch and a loaded state are read at the first batch, after restoring
        (rank, world_size), n, epoch = self.shard, len(self.labels), self.epoch_fn()
        start = self.resume_at.get("batches", 0) if self.resume_at.get("epoch") == epoch else 0
        self.resume_at = {}
        order = torch.arange(n)
        if self.shuffle:  # seeded by epoch: the same order on every rank and after a resume
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=generator)[: n // world_size * world_size]
        order = order[rank::world_size].to(self.labels.device)
        for step in range(start, len(self)):
            self.position = {"epoch": epoch, "batches": step + 1}
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            images, labels = self.images[idx], self.labels[idx]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels


@dataclass(eq=False)
class TensorImageDataset(Dataset):
    """Per-sample view of a uint8 image tensor, transformed like the batch path (standard path)."""

    images: Any
    labels: torch.Tensor
    pipeline: BatchPipeline
    train: bool

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.pipeline(self.images[index].unsqueeze(0), train=self.train).squeeze(0)
        return image, self.labels[index]


def build_loader(images, labels, pipeline: BatchPipeline, hp: Any, trainer: Any, train: bool):
    """The split's loader for the datamodule's hyperparameters ``hp`` (``data.*``)."""
    batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
    # data.drop_last=null: drop when the model replays CUDA graphs (one batch shape)
    graphs = getattr(getattr(trainer, "lightning_module", None), "uses_cuda_graphs", False)
    drop_last = train and bool(graphs if hp.drop_last is None else hp.drop_last)
    pin_memory = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
    shard = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    overfitting = trainer is not None and bool(trainer.overfit_batches)  # debug=overfit
    if hp.in_memory:
        # overfitting: one seeded order for every epoch, so the first batches stay the same
        epoch_fn = (lambda: 0) if overfitting else lambda: getattr(trainer, "current_epoch", 0)
        pin_memory = pin_memory and images.device.type == "cpu"
        return TensorBatchLoader(
            images, labels, batch_size, train, drop_last, hp.seed, epoch_fn, shard, pin_memory
        )
    dataset = TensorImageDataset(images, labels, pipeline, train=train)
    # Lightning's DistributedSampler pads the last shard with repeats, which synced metrics would
    # count twice: every sample once (a DistributedSampler subclass, so Lightning keeps it)
    sampler = None
    if not train and shard[1] > 1:
        sampler = UnrepeatedDistributedSampler(dataset, shard[1], shard[0], shuffle=False)
    workers = min(8, os.cpu_count() or 1) if hp.num_workers is None else hp.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and not overfitting,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
