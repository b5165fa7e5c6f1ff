"""What the loaders serve: fixed batches when overfitting, every sample once under DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from imgcls.data.digits import DigitsDataModule
from imgcls.train import train


class _Trainer:
    """The trainer attributes a datamodule's loaders read."""

    def __init__(self, overfit_batches: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.overfit_batches, self.global_rank, self.world_size = overfit_batches, rank, world_size
        self.current_epoch, self.training = 0, True
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"))


def _first_labels(dm: DigitsDataModule, trainer: _Trainer, epoch: int, batches: int = 3):
    trainer.current_epoch = epoch
    loader = iter(dm.train_dataloader())
    return torch.cat([next(loader)[1] for _ in range(batches)])


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_overfit_batches_are_the_same_every_epoch(in_memory) -> None:
    dm = DigitsDataModule(batch_size=8, in_memory=in_memory, num_workers=0)
    dm.setup("fit")
    dm.trainer = _Trainer(overfit_batches=3)
    assert torch.equal(_first_labels(dm, dm.trainer, 0), _first_labels(dm, dm.trainer, 1))
    dm.trainer = _Trainer()  # normal training reshuffles every epoch
    torch.manual_seed(0)
    assert not torch.equal(_first_labels(dm, dm.trainer, 0), _first_labels(dm, dm.trainer, 1))


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_debug_overfit_memorises_its_batches(make_cfg, in_memory) -> None:
    cfg = make_cfg(
        "train",
        [
            "data=digits",
            "debug=overfit",
            "model=mlp",
            "model.net.dropout=0",
            "trainer.max_epochs=25",
            f"data.in_memory={in_memory}",
            "data.num_workers=0",
            "logger=csv",
            "callbacks=none",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["train/acc"] == 1.0


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_distributed_evaluation_serves_every_sample_exactly_once(in_memory) -> None:
    # 325 test images over 2 ranks: a padding sampler would repeat one of them
    dm = DigitsDataModule(
        batch_size=16, in_memory=in_memory, num_workers=0, classes=[0, 1, 3, 4, 5, 6, 7, 8, 9]
    )
    dm.setup("test")
    images, _ = dm.splits["test"]
    served = []
    for rank in range(2):
        dm.trainer = _Trainer(rank=rank, world_size=2)
        dm.trainer.training = False
        loader = dm.test_dataloader()
        batches = [dm.on_after_batch_transfer(batch, 0)[0] for batch in loader]
        assert len(batches) == len(loader)
        served.append(torch.cat(batches))
    assert [len(s) for s in served] == [163, 162]
    # the same multiset of images as one process sees: none repeated, none left out
    rows, counts = torch.unique(torch.cat(served).flatten(1), dim=0, return_counts=True)
    expected_rows, expected_counts = torch.unique(
        dm.preprocess(images).flatten(1), dim=0, return_counts=True
    )
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(rows, expected_rows)
